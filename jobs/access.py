"""What every route of the gateway needs: the caller's key, the job API's services, and a job as the caller may
see it (another key's job is as absent as a missing one)."""

from __future__ import annotations

import base64
from typing import Any

from starlette.requests import HTTPConnection

from .errors import NotFound, Unauthorized
from .services import Services
from .views import job_view


def services(connection: HTTPConnection) -> Services:
    return connection.app.state.services


def owner_of(connection: HTTPConnection, authorization: str | None = None) -> str:
    """The key name behind ``Authorization: Bearer <key>`` (or ``authorization``, a WebSocket's first message)."""
    settings = connection.app.state.settings
    if not settings.auth:
        return "default"
    scheme, _, token = (authorization or connection.headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "basic":  # A1111 clients' --api-auth: any user name, the key as the password
        try:
            token = base64.b64decode(token.strip(), validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            token = ""
    owner = connection.app.state.keys.get(token.strip()) if scheme.lower() in ("bearer", "basic") else None
    if owner is None:
        raise Unauthorized(
            "missing or unknown API key: send `Authorization: Bearer <key>` (or HTTP basic auth, the key as the "
            "password)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return owner


async def owned_record(connection: HTTPConnection, job_id: str, owner: str) -> dict[str, str]:
    record = await services(connection).state.record(job_id) if plausible_id(job_id) else None
    if record is None or record["owner"] != owner:
        raise NotFound(f"no job {job_id!r}")
    return record


async def view(connection: HTTPConnection, record: dict[str, str]) -> dict[str, Any]:
    """The job as the API shows it, with its queue position and estimated time while it is pending."""
    position = estimated = None
    jobs = services(connection)
    if record["status"] == "pending":
        # Not in the queue list while pending: a dispatcher took it a moment ago and starts it now.
        position = await jobs.queue.position(record["id"]) or 0
        rate = await jobs.state.service_rate()
        if rate is not None:
            _queued, running = await jobs.queue.depth()
            estimated = rate.estimate(position, running)
    return job_view(
        record,
        base_url=str(connection.base_url).rstrip("/"),
        result_ttl_s=connection.app.state.settings.result_ttl_s,
        queue_position=position,
        estimated_time=estimated,
    )


def plausible_id(job_id: str) -> bool:
    return job_id.startswith("job_") and len(job_id) <= 40 and all(c.isalnum() or c in "_-" for c in job_id)
