"""Typed serving errors and the ONE place that maps any exception to an HTTP status and JSON body.

Every failure a client can see goes through :func:`error_reply`, so the adapter, the tests and the docs
agree on codes: invalid input -> 400, out of memory -> 507, time budget -> 504, anything else -> 500.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


class ServingError(Exception):
    """Base of errors that carry their own HTTP status."""

    status = 500
    phrase = "Internal Server Error"

    def __init__(self, message: str, *, field: str | None = None, value: Any = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.value = value


class InvalidRequest(ServingError):
    """The request itself is wrong (bad JSON, unknown field, value out of bounds). The client must fix it."""

    status = 400
    phrase = "Bad Request"


class ResponseTooLarge(ServingError):
    """The encoded response would exceed ``max_response_bytes`` (TorchServe kills a worker that sends one)."""

    status = 507
    phrase = "Insufficient Storage"


class TimeBudgetExceeded(ServingError):
    """The request's own ``timeout_s`` ran out; it was stopped, its batch-mates went on."""

    status = 504
    phrase = "Gateway Timeout"


class NonFiniteImage(ServingError):
    """The VAE decoded NaN/inf (a black image) even when retried in float32."""


class OutOfMemory(ServingError):
    status = 507
    phrase = "Insufficient Storage"


class ConfigError(Exception):
    """The model yaml's ``handler:`` section is wrong. Raised at startup, never per request."""


@dataclass
class Reply:
    """One row's answer: what the adapter hands TorchServe for that row."""

    status: int
    body: bytes
    content_type: str = "application/json"
    phrase: str = "OK"
    headers: dict[str, str] = field(default_factory=dict)
    # Continuous batching only: TorchServe's stopping criterion for this row. None: an ordinary response;
    # False: a chunk, more follow; True: the last chunk of a response whose first chunk went out earlier.
    stop: bool | None = None

    def json(self) -> Any:
        return json.loads(self.body)


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, (MemoryError, torch.OutOfMemoryError))


def error_reply(exc: BaseException) -> Reply:
    """Map an exception to its reply. Unknown exceptions become 500 with their type and message."""
    if isinstance(exc, ServingError):
        error = exc
    elif is_out_of_memory(exc):
        error = OutOfMemory(f"out of memory while generating: {exc}")
    else:
        error = ServingError(f"generation failed: {type(exc).__name__}: {exc}")
    body: dict[str, Any] = {"code": error.status, "type": type(error).__name__, "message": error.message}
    if error.field is not None:
        body["field"] = error.field
        body["value"] = _jsonable(error.value)
    return Reply(
        status=error.status,
        phrase=error.phrase,
        body=json.dumps({"error": body}).encode(),
    )


def _jsonable(value: Any) -> Any:
    """Echo a rejected value back only in a short JSON-safe form (it may be huge or not JSON at all)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= 64 else f"<integer of {value.bit_length()} bits>"
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else repr(value)
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
