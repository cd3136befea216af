"""A job in: checked by the same contract as /predictions, then created and queued in one atomic step. Every
protocol's submit route (our POST /generate, OpenAI's images routes, A1111's txt2img / img2img) ends here."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection

from handler.contract.decode import parse_json_text
from handler.contract.errors import InvalidRequest, ServingError
from handler.contract.parse import parse_request
from handler.contract.request import GenerationRequest
from handler.wire.events import STATUS

from . import webhooks
from .access import services
from .errors import Conflict, NotReady, QueueFull, StillRunning, TooLarge, TooManyJobs, UnsupportedMediaType
from .state import TERMINAL, SubmitRefused

MAX_METADATA_BYTES = 4096


@dataclass(frozen=True)
class Submitted:
    job_id: str
    request: GenerationRequest  # as parsed (the seed as sent: None when the server draws it)
    replayed: bool = False  # an Idempotency-Key's earlier job


async def submit_job(
    connection: HTTPConnection,
    owner: str,
    payload: dict[str, Any],
    job_fields: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> Submitted:
    """Check ``payload`` (a /predictions body without the transport fields) and queue it as a job of ``owner``.

    1. The handler's own contract, model-aware checks included, as the dispatcher will send it (streamed);
       the job API's own fields (``webhook``, ``metadata``).
    2. In ONE atomic step (state.create): the Idempotency-Key (the same key and body give the same job, another
       body a 409), the caps per key and overall (429 + Retry-After), and the record, body and event log with
       the claim. Then the SAQ job (a dispatcher always finds the record); if it cannot be queued the submit is
       withdrawn whole, claim included.

    Raises:
        ServingError: the 4xx of the first thing wrong; nothing is queued.
    """
    app = connection.app.state
    settings, model, job_fields = app.settings, app.handler_settings, job_fields or {}
    # 1.
    parsed = parse_request({**payload, "stream": True}, model.limits, model.defaults, app.tokenizers, app.step_plans)
    if "webhook" in job_fields:
        webhooks.check_webhook(job_fields["webhook"], settings)
    if "metadata" in job_fields:
        check_metadata(job_fields["metadata"])
    body = json.dumps(payload, separators=(",", ":")).encode()
    fingerprint = hashlib.sha256(body + json.dumps(job_fields, sort_keys=True).encode()).hexdigest()
    state, queue = services(connection).state, services(connection).queue
    # 2.
    job_id = "job_" + secrets.token_urlsafe(18)
    idempotency = None
    if idempotency_key is not None:
        if not 1 <= len(idempotency_key) <= 255 or not idempotency_key.isprintable():
            raise InvalidRequest(
                "`Idempotency-Key` must be 1-255 printable characters", field="Idempotency-Key", value=idempotency_key
            )
        idempotency = (state.idempotency_key(owner, idempotency_key), fingerprint)
    fields = {"total_steps": parsed.denoising_steps, "prompt": parsed.prompt[:200], **job_fields}
    try:
        claimed = await state.create(
            job_id,
            owner,
            body,
            fields,
            max_pending=settings.max_queued,
            max_open=settings.max_open_per_key,
            idempotency=idempotency,
            idempotency_ttl_s=settings.idempotency_ttl_s,
        )
    except SubmitRefused as refused:
        if refused.reason == "queue_full":
            raise QueueFull(
                f"the queue is full ({refused.pending} jobs waiting)", headers={"Retry-After": "30"}
            ) from None
        raise TooManyJobs(
            f"this key has {settings.max_open_per_key} unfinished jobs, the most allowed", headers={"Retry-After": "10"}
        ) from None
    if claimed is not None:
        existing_id, _, existing_print = claimed.partition(" ")
        if existing_print != fingerprint:
            raise Conflict("this Idempotency-Key was used with another request body")
        return Submitted(existing_id, parsed, replayed=True)
    try:
        await queue.enqueue(services(connection).generation_job(job_id))
    except BaseException:
        await state.withdraw(job_id, owner, idempotency)  # nothing of a failed submit stays, its claim neither
        raise
    return Submitted(job_id, parsed)


async def json_body(request: Any) -> Any:
    """A submit route's body: at most ``max_body_bytes`` (413 past it), ``application/json`` (415 otherwise),
    UTF-8 and strict JSON (400 otherwise)."""
    limit = request.app.state.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body of {declared} bytes is over {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body is over {limit} bytes")
        chunks.append(chunk)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise UnsupportedMediaType(f"send `Content-Type: application/json`, not {content_type or 'none'!r}")
    try:
        return parse_json_text(b"".join(chunks).decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidRequest("request body is not UTF-8") from None


async def stored_images(connection: HTTPConnection, record: dict[str, str]) -> list[bytes]:
    """A finished job's encoded images from the result store."""
    images = []
    for key in json.loads(record["images"]):
        data = await services(connection).store.get(key)
        if data is None:
            raise NotReady("the image is no longer stored")
        images.append(data)
    return images


async def wait_terminal(connection: HTTPConnection, job_id: str, wait_s: float) -> dict[str, str]:
    """The job's record once it finished, or as it is after ``wait_s``."""
    state = services(connection).state
    deadline, after = time.monotonic() + wait_s, "0-0"
    while (left := deadline - time.monotonic()) > 0:
        for entry_id, kind, data in await state.events(job_id, after, block_ms=max(int(left * 1000), 1)):
            after = entry_id
            if kind == STATUS and data.get("status") in TERMINAL:
                return await state.record(job_id)
    return await state.record(job_id)


def check_metadata(value: Any) -> None:
    if not isinstance(value, dict):
        raise InvalidRequest(
            f"`metadata` must be a JSON object but is {type(value).__name__}", field="metadata", value=value
        )
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise InvalidRequest(
            f"`metadata` must be at most {MAX_METADATA_BYTES} bytes of UTF-8 JSON but is {size}",
            field="metadata",
            value=size,
        )


def finished(record: dict[str, str], waited_s: float) -> None:
    """Raises the job's own error when it failed, StillRunning when it did not finish in time."""
    status, job_id = record["status"], record["id"]
    if status == "completed":
        return
    if status == "failed":
        document = json.loads(record.get("error") or "{}")
        error = ServingError(document.get("message", "the job failed"), field=document.get("field"))
        error.status = int(document.get("code", 500))
        raise error
    if status in TERMINAL:
        raise NotReady(f"job {job_id} was {status}")
    raise StillRunning(
        f"job {job_id} did not finish within {waited_s:g} s; it goes on: GET /jobs/{job_id}",
        headers={"Location": f"/jobs/{job_id}"},
    )
