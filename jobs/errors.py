"""The job API's own errors: typed, the HTTP status on the class, like the handler's
(:mod:`handler.contract.errors`, whose InvalidRequest the gateway raises for bad input). jobs.gateway maps every
one to its answer in one place: ``{"error": {"code", "type", "message"[, "field", "value"]}}``."""

from __future__ import annotations

from typing import Any

from handler.contract.errors import ServingError


class JobApiError(ServingError):
    """An error of the job API; ``headers`` go out with its answer (Retry-After, WWW-Authenticate)."""

    def __init__(
        self, message: str, *, headers: dict[str, str] | None = None, field: str | None = None, value: Any = None
    ):
        super().__init__(message, field=field, value=value)
        self.headers = headers or {}


class Unauthorized(JobApiError):
    status, phrase = 401, "Unauthorized"


class NotFound(JobApiError):
    """No such job, or another key's (as absent as a missing one)."""

    status, phrase = 404, "Not Found"


class Conflict(JobApiError):
    """Finished already (cancel), or an Idempotency-Key used with another body."""

    status, phrase = 409, "Conflict"


class NotReady(JobApiError):
    """No image yet: the job is not completed."""

    status, phrase = 409, "Conflict"


class Expired(JobApiError):
    status, phrase = 410, "Gone"


class TooLarge(JobApiError):
    status, phrase = 413, "Content Too Large"


class UnsupportedMediaType(JobApiError):
    status, phrase = 415, "Unsupported Media Type"


class QueueFull(JobApiError):
    status, phrase = 429, "Too Many Requests"


class TooManyJobs(JobApiError):
    """This key has ``max_open_per_key`` unfinished jobs."""

    status, phrase = 429, "Too Many Requests"


class ModelNotFound(NotFound):
    """A ``model`` this server does not serve (the OpenAI-compatible routes)."""


class StillRunning(JobApiError):
    """A synchronous route's wait (``max_wait_s``) ended before the job did; the job goes on (GET /jobs/{id})."""

    status, phrase = 504, "Gateway Timeout"
