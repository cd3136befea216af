"""Typed serving errors and the ONE place that maps any exception to an HTTP status and JSON body.

Every failure a client can see goes through :func:`as_serving_error`, so the adapters, the tests and the docs
agree on codes: invalid input -> 400, out of memory -> 507, time budget -> 504, a deadline the server cannot
meet -> 503 with Retry-After, anything else -> 500.
"""

from __future__ import annotations

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


class DeadlineUnreachable(ServingError):
    """At admission, the server's estimate of the request's finish misses its ``deadline_s``: refused at once,
    with ``Retry-After`` (the estimate), instead of run late."""

    status = 503
    phrase = "Service Unavailable"

    def __init__(self, message: str, *, retry_after_s: float, field: str | None = None, value: Any = None):
        super().__init__(message, field=field, value=value)
        self.retry_after_s = retry_after_s


class NonFiniteImage(ServingError):
    """The VAE decoded NaN/inf (a black image) even when retried in float32."""


class OutOfMemory(ServingError):
    status = 507
    phrase = "Insufficient Storage"


class ConfigError(Exception):
    """The model yaml's ``handler:`` section is wrong. Raised at startup, never per request."""


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, (MemoryError, torch.OutOfMemoryError))


def as_serving_error(exc: BaseException) -> ServingError:
    """THE mapping of any exception to a client-visible error: typed errors keep their status, running out of
    memory is 507, anything else 500 with its type and message."""
    if isinstance(exc, ServingError):
        return exc
    if is_out_of_memory(exc):
        return OutOfMemory(f"out of memory while generating: {exc}")
    return ServingError(f"generation failed: {type(exc).__name__}: {exc}")


def error_document(exc: BaseException) -> dict[str, Any]:
    """``{"code", "type", "message"[, "field", "value"]}`` for any exception (see :func:`as_serving_error`)."""
    error = as_serving_error(exc)
    document: dict[str, Any] = {"code": error.status, "type": type(error).__name__, "message": error.message}
    if error.field is not None:
        document["field"] = error.field
        document["value"] = _jsonable(error.value)
    return document


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


# Every error type a client can receive (metrics create their series at zero for each).
CLIENT_VISIBLE_ERRORS = (
    InvalidRequest,
    ResponseTooLarge,
    TimeBudgetExceeded,
    DeadlineUnreachable,
    NonFiniteImage,
    OutOfMemory,
    ServingError,
)
