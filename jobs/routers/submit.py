"""POST /generate: a job in, checked by the same contract as /predictions, before anything is queued."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from handler.contract.decode import parse_json_text
from handler.contract.errors import InvalidRequest
from handler.contract.parse import parse_request
from handler.wire.events import STATUS

from .. import webhooks
from ..access import owner_of, services, view
from ..errors import Conflict, QueueFull, TooLarge, TooManyJobs, UnsupportedMediaType
from ..state import TERMINAL, SubmitRefused

JOB_FIELDS = ("webhook", "metadata")  # the job API's own fields, beside the /predictions schema
TRANSPORT_FIELDS = ("stream", "response_format")  # /predictions' transport choices: the job API makes them
MAX_METADATA_BYTES = 4096

router = APIRouter()


@router.post("/generate", summary="Submit a job")
async def generate(request: Request) -> JSONResponse:
    """Submit a job: 202 with its id at once (200 with the finished job under ``Prefer: wait=N``).

    1. Key, size and content type.
    2. Strict JSON; the job API's fields apart; the rest checked by the handler's own contract, model-aware
       checks included (sampler pairs, prompt tokens).
    3. In ONE atomic step (state.create): the Idempotency-Key (the same key and body give the same job, another
       body a 409), the caps per key and overall (429 + Retry-After), and the record, body and event log with
       the claim. Then the SAQ job (a dispatcher always finds the record); if it cannot be queued the submit is
       withdrawn whole, claim included.
    4. ``Prefer: wait=N``: answer with the finished job if it finishes within N s.
    """
    app = request.app.state
    settings = app.settings
    # 1.
    owner = owner_of(request)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_body_bytes:
        raise TooLarge(f"request body of {declared} bytes is over {settings.max_body_bytes}")
    raw = await _read_limited(request, settings.max_body_bytes)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise UnsupportedMediaType(f"send `Content-Type: application/json`, not {content_type or 'none'!r}")
    wait_s = _prefer_wait(request.headers.get("prefer"), settings.max_wait_s)
    # 2.
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("request body is not UTF-8") from None
    payload = parse_json_text(text)
    if not isinstance(payload, dict):
        raise InvalidRequest(f"request body must be a JSON object but is {type(payload).__name__}")
    job_fields = {name: payload.pop(name) for name in JOB_FIELDS if name in payload}
    for name in TRANSPORT_FIELDS:
        if name in payload:
            raise InvalidRequest(
                f"`{name}` is chosen by the job API (progress is in /jobs/{{id}}/events, the image at "
                f"/jobs/{{id}}/image); leave it out",
                field=name,
                value=payload[name],
            )
    # Checked as the dispatcher will send it: streamed (so `preview_every` is allowed).
    model = app.handler_settings
    parsed = parse_request({**payload, "stream": True}, model.limits, model.defaults, app.tokenizers, app.step_plans)
    if "webhook" in job_fields:
        webhooks.check_webhook(job_fields["webhook"], settings)
    if "metadata" in job_fields:
        _check_metadata(job_fields["metadata"])
    body = json.dumps(payload, separators=(",", ":")).encode()
    fingerprint = hashlib.sha256(body + json.dumps(job_fields, sort_keys=True).encode()).hexdigest()
    state, queue = services(request).state, services(request).queue
    # 3.
    job_id = "job_" + secrets.token_urlsafe(18)
    idempotency = None
    idempotency_key = request.headers.get("idempotency-key")
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
        record = await state.record(existing_id)
        answer = await view(request, record) if record else {"job_id": existing_id}
        return JSONResponse(
            answer, status_code=200, headers={"Idempotent-Replayed": "true", "Location": f"/jobs/{existing_id}"}
        )
    try:
        await queue.enqueue(services(request).generation_job(job_id))
    except BaseException:
        await state.withdraw(job_id, owner, idempotency)  # nothing of a failed submit stays, its claim neither
        raise
    # 4.
    headers = {"Location": f"/jobs/{job_id}"}
    if wait_s:
        record = await _wait_terminal(state, job_id, wait_s)
        headers["Preference-Applied"] = f"wait={wait_s:g}"
        if record["status"] in TERMINAL:
            return JSONResponse(await view(request, record), status_code=200, headers=headers)
    record = await state.record(job_id)
    return JSONResponse(await view(request, record), status_code=202, headers=headers)


async def _read_limited(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _prefer_wait(header: str | None, max_wait_s: int) -> float:
    if not header:
        return 0.0
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                seconds = float(value)
            except ValueError:
                raise InvalidRequest(
                    f"`Prefer: wait=N` needs a number of seconds but is {value!r}", field="Prefer", value=header
                ) from None
            if not 0 < seconds <= max_wait_s:
                raise InvalidRequest(
                    f"`Prefer: wait` must be in (0, {max_wait_s}] but is {value}", field="Prefer", value=header
                )
            return seconds
    return 0.0


def _check_metadata(value: Any) -> None:
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


async def _wait_terminal(state, job_id: str, wait_s: float) -> dict[str, str]:
    deadline, after = time.monotonic() + wait_s, "0-0"
    while (left := deadline - time.monotonic()) > 0:
        for entry_id, kind, data in await state.events(job_id, after, block_ms=max(int(left * 1000), 1)):
            after = entry_id
            if kind == STATUS and data.get("status") in TERMINAL:
                return await state.record(job_id)
    return await state.record(job_id)
