"""Every reply a request can get, for both scheduling modes: the JSON body, a raw image and its headers, stream
chunks and final events, errors. A :class:`Reply` knows its request's outcome, whatever form it travels in, so
the metrics never parse bodies.

The one rule for a request's LAST reply (:func:`final_reply`), whether its first bytes went out earlier
("committed": progress chunks streamed, or continuous batching's first chunk) or not:

    streamed, committed or successful  -> JSON lines: the unsent progress events, then a ``result`` or ``error`` event
    not committed                      -> the ordinary response: its own status, content type and headers
    committed, not streamed            -> the ordinary body under the 200 already sent; an error document then
                                          carries a ``note`` (and the first chunk said ``X-Deferred-Status``)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from handler.contract.errors import ResponseTooLarge, as_serving_error, error_document
from handler.contract.fields import IMAGE_CONTENT_TYPES
from handler.contract.request import GenerationRequest
from handler.wire.encode import json_body
from handler.wire.events import ERROR, RESULT, event_line

NDJSON = "application/x-ndjson"
JSON = "application/json"
DEFERRED_STATUS_HEADER = "X-Deferred-Status"
DEFERRED_NOTE = (
    "continuous batching: HTTP 200 was sent when this request joined the running batch, so its outcome is this body"
)


@dataclass
class Reply:
    """One row's answer: what an adapter hands its framework for that row.

    ``status`` is the HTTP status on the wire; ``error`` and ``code`` are the request's own outcome, also when it
    travels inside a 200 (a stream's error event, a deferred error body).
    """

    status: int
    body: bytes
    content_type: str = JSON
    phrase: str = "OK"
    headers: dict[str, str] = field(default_factory=dict)
    # TorchServe's stopping criterion for this row. None: an ordinary response; False: a chunk, more follow;
    # True: the last chunk of a response whose first bytes went out earlier.
    stop: bool | None = None
    error: str | None = None  # the error's type name; None for a success
    code: int = 200
    images: list[Any] | None = None  # a success's decoded images, when the core keeps them (Triton's pixels)

    @property
    def outcome(self) -> str:
        """``ok``, ``client_error`` or ``server_error``: the request's outcome, not the wire status."""
        if self.error is None:
            return "ok"
        return "client_error" if self.code < 500 else "server_error"

    def json(self) -> Any:
        return json.loads(self.body)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def error_reply(exc: BaseException) -> Reply:
    """The ordinary response for a failed request (status and type from
    :func:`handler.contract.errors.as_serving_error`)."""
    error = as_serving_error(exc)
    document = error_document(error)
    retry_after = getattr(error, "retry_after_s", None)
    return Reply(
        status=error.status,
        phrase=error.phrase,
        body=json.dumps({"error": document}).encode(),
        error=document["type"],
        code=error.status,
        headers={} if retry_after is None else {"Retry-After": str(max(1, math.ceil(retry_after)))},
    )


def image_headers(request: GenerationRequest, timings_ms: Any = None, batch: Any = None) -> dict[str, str]:
    """The X- headers of a raw image response (timings and batch only once they are known)."""
    headers = {"X-Seed": str(request.seed), "X-Parameters": _compact(request.parameters())}
    if timings_ms is not None:
        headers["X-Timings-Ms"] = _compact(timings_ms)
    if batch is not None:
        headers["X-Batch"] = _compact(batch)
    return headers


def success_reply(
    request: GenerationRequest,
    seeds: list[int],
    encoded: list[bytes],
    timings_ms: dict[str, float],
    batch: dict[str, Any],
    max_bytes: int,
    images: list[Any] | None = None,
) -> Reply:
    """A request's images: one JSON document, or one raw image with X- headers (``images``, the decoded ones,
    ride along for an adapter that sends pixels).

    Raises:
        ResponseTooLarge: past ``max_bytes`` (TorchServe kills a worker that sends more than it allows).
    """
    timings = {str(stage): round(ms, 1) for stage, ms in timings_ms.items()}
    if request.response_format == "image":
        reply = Reply(
            status=200,
            body=encoded[0],
            content_type=IMAGE_CONTENT_TYPES[request.output_format],
            headers=image_headers(request, timings, batch),
        )
    else:
        document = {"seeds": seeds, "parameters": request.parameters(), "timings_ms": timings, "batch": batch}
        reply = Reply(status=200, body=json_body(encoded, request.output_format, document))
    if len(reply.body) > max_bytes:
        raise ResponseTooLarge(
            f"response of {len(reply.body)} bytes exceeds max_response_bytes={max_bytes}; "
            "ask for jpeg or webp, fewer images or a smaller size"
        )
    reply.images = images
    return reply


def final_event(reply: Reply) -> bytes:
    """A stream's last JSON line: ``{"event": "result", ...}`` or ``{"event": "error", code, type, message}``."""
    if reply.error is not None:
        return event_line(ERROR, **reply.json()["error"])
    # The success body is one JSON object holding the images: splice the event name in, no re-encoding.
    return b'{"event":"%s",' % RESULT.encode() + reply.body[1:] + b"\n"


def final_reply(outcome: Reply, request: GenerationRequest, events: bytes, committed: bool) -> Reply:
    """A request's last reply, from its ordinary reply (``outcome``): the rule in the module doc."""
    if request.stream and (committed or outcome.error is None):
        reply = Reply(200, events + final_event(outcome), NDJSON, error=outcome.error, code=outcome.code)
    elif not committed:
        reply = outcome
    elif outcome.error is not None:
        document = outcome.json()
        document["error"]["note"] = DEFERRED_NOTE
        reply = Reply(200, json.dumps(document).encode(), error=outcome.error, code=outcome.code)
    else:
        reply = Reply(200, outcome.body, outcome.content_type)  # its headers went out with the first chunk
    reply.stop = True if committed else None
    return reply


def chunk_reply(request: GenerationRequest, events: bytes, first: bool) -> Reply:
    """A chunk for a request that goes on: its progress lines (streamed) or nothing. The first chunk carries
    the status and headers: the content type the last chunk will have, and ``X-Deferred-Status`` for a
    request that did not ask to stream (its outcome will be in the body)."""
    headers: dict[str, str] = {}
    if request.stream:
        content_type = NDJSON
    else:
        headers[DEFERRED_STATUS_HEADER] = "true"
        if request.response_format == "image":
            content_type = IMAGE_CONTENT_TYPES[request.output_format]
            headers.update(image_headers(request))
        else:
            content_type = JSON
    return Reply(200, events, content_type, headers=headers if first else {}, stop=False)
