"""TorchServe's answers as the job API sees them: which are worth another attempt, and any error body (the
frontend's, the handler's, a stream's error event, plain text) as a clean job error."""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

RETRYABLE_STATUS = (500, 502, 503)  # worker died / TorchServe restarting / TorchServe's own queue full
# ... except the handler's own verdict on the request: its deadline cannot be met (a later attempt is later still).
FINAL_TYPES = ("DeadlineUnreachable",)


def retryable(status: int, error: dict[str, Any]) -> bool:
    """Whether another attempt may succeed."""
    return status in RETRYABLE_STATUS and error.get("type") not in FINAL_TYPES


class Retryable(Exception):
    """TorchServe could not run the job now; SAQ puts it back at the head of the queue for another try. ``error``
    is the clean job error the job fails with when no attempt is left."""

    def __init__(self, error: dict[str, Any]):
        super().__init__(error["message"])
        self.error = error


def torchserve_error(status: int, text: str) -> dict[str, Any]:
    """Any TorchServe answer as a clean job error ``{"code", "type", "message"[, "field"]}``.

    Three shapes reach a dispatcher: our handler's ``{"error": {...}}`` (also its stream ``error`` events, which
    are flat), TorchServe's frontend ``{"code", "type", "message"}`` (InvalidKeyException, ModelNotFoundException,
    ServiceUnavailableException, 413 ...), and anything else (plain text, HTML). Messages lose any traceback and
    any server path."""
    payload: Any = None
    with contextlib.suppress(ValueError):
        payload = json.loads(text)
    error = payload.get("error", payload) if isinstance(payload, dict) else None
    if not isinstance(error, dict) or not ("message" in error or "type" in error):
        first = text.strip().splitlines()[0] if text.strip() else ""
        return {"code": status, "type": "TorchServeError", "message": _clean(first) or f"TorchServe answered {status}"}
    code = error.get("code", status)
    document = {
        "code": code if isinstance(code, int) and 400 <= code <= 599 else status,
        "type": str(error.get("type") or "TorchServeError")[:80],
        "message": _clean(str(error.get("message", ""))) or f"TorchServe answered {status}",
    }
    if isinstance(error.get("field"), str):
        document["field"] = error["field"]
    return document


def _clean(message: str) -> str:
    """No traceback and no file path in a client-visible message; at most 500 characters."""
    message = message.split("Traceback (most recent call last)")[0]
    message = re.sub(r"(?:[A-Za-z]:)?(?:[\\/][\w.\-]+){2,}[\\/]?", "<path>", message)
    return message.strip()[:500]
