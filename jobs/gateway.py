"""The gateway: the job API over HTTP (FastAPI on uvicorn). Stateless: every fact lives in Redis, so any number
of replicas serve the same jobs.

Endpoints (README.md#async-jobs): POST /generate, GET/DELETE /jobs/{id}, GET /jobs/{id}/events (SSE),
WS /ws/jobs/{id}, GET /jobs/{id}/image, GET /jobs (this key's recent jobs), GET /queue, GET /healthz,
GET /metrics, GET / (the web page).

Run: ``uvicorn jobs.gateway:app`` with ``SDXL_JOBS_CONFIG=config/jobs.yaml``, or ``python -m jobs.gateway``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import secrets
import time
from pathlib import Path
from typing import Any

import yaml
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from saq import Status

from handler.contract.decode import parse_json_text
from handler.contract.errors import InvalidRequest, error_document
from handler.contract.parse import parse_request
from handler.contract.prompts import PromptTokenizers
from handler.contract.settings import HandlerSettings

from . import metrics, webhooks
from .services import Services
from .settings import JobSettings, load_api_keys
from .state import RECENT_JOBS, TERMINAL, SubmitRefused
from .views import job_view, shown_status

PAGE = Path(__file__).with_name("page.html")
JOB_FIELDS = ("webhook", "metadata")  # the job API's own fields, beside the /predictions schema
TRANSPORT_FIELDS = ("stream", "response_format")  # /predictions' transport choices: the job API makes them
MAX_METADATA_BYTES = 4096


class ApiError(Exception):
    """An error answer with its status; ``headers`` e.g. Retry-After."""

    def __init__(self, status: int, message: str, *, kind: str = "ApiError", headers: dict | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers, self.extra = status, message, kind, headers or {}, extra


def error_body(status: int, kind: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": status, "type": kind, "message": message, **extra}}


def create_app(settings: JobSettings | None = None) -> FastAPI:
    settings = settings or JobSettings.load()
    model_yaml = yaml.safe_load(Path(settings.model_yaml).read_text())
    handler_settings = HandlerSettings.from_yaml(model_yaml)
    tokenizers = PromptTokenizers.load(settings.tokenizer_path) if settings.tokenizer_path else None
    keys = load_api_keys(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.services = Services.connect(settings)
        yield
        await app.state.services.close()

    app = FastAPI(title="sdxl-torchserve jobs", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.settings = settings

    # -- errors: every one mapped to a status in this one place ------------------------------------------

    @app.exception_handler(InvalidRequest)
    async def invalid(_request: Request, exc: InvalidRequest) -> JSONResponse:
        return JSONResponse({"error": error_document(exc)}, status_code=400)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        body = error_body(exc.status, exc.kind, exc.message, **exc.extra)
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    # -- helpers ---------------------------------------------------------------------------------------

    def owner_of(authorization: str | None) -> str:
        if not settings.auth:
            return "default"
        scheme, _, token = (authorization or "").partition(" ")
        owner = keys.get(token.strip()) if scheme.lower() == "bearer" else None
        if owner is None:
            raise ApiError(
                401,
                "missing or unknown API key: send `Authorization: Bearer <key>`",
                kind="Unauthorized",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return owner

    def services() -> Services:
        return app.state.services

    async def owned_record(job_id: str, owner: str) -> dict[str, str]:
        record = await services().state.record(job_id) if _plausible_id(job_id) else None
        if record is None or record["owner"] != owner:  # another key's job is as absent as a missing one
            raise ApiError(404, f"no job {job_id!r}", kind="NotFound")
        return record

    async def view(record: dict[str, str], base_url: str) -> dict[str, Any]:
        position = estimated = None
        if record["status"] == "pending":
            position = await services().queue.position(record["id"])
            rate, mean_run = await services().state.throughput()
            if position is not None and rate:
                estimated = (position + 1) / rate + (mean_run or 0.0)
        return job_view(
            record,
            base_url=base_url,
            result_ttl_s=settings.result_ttl_s,
            queue_position=position,
            estimated_time=estimated,
        )

    def base_url(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    # -- submit ----------------------------------------------------------------------------------------

    @app.post("/generate")
    async def generate(request: Request) -> JSONResponse:
        """Submit a job: 202 with its id at once (200 with the finished job under ``Prefer: wait=N``).

        1. Key, size and content type.
        2. Strict JSON; the job API's fields apart; the rest checked by the handler's own schema.
        3.-5. In ONE atomic step (state.create): the Idempotency-Key (the same key and body give the same job,
           another body a 409), the caps per key and overall (429 + Retry-After), and the record, body and
           event log with the claim. Then the SAQ job (a dispatcher always finds the record); if it cannot be
           queued the submit is withdrawn whole, claim included.
        6. ``Prefer: wait=N``: answer with the finished job if it finishes within N s.
        """
        # 1.
        owner = owner_of(request.headers.get("authorization"))
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise ApiError(413, f"request body of {declared} bytes is over {settings.max_body_bytes}", kind="TooLarge")
        raw = await _read_limited(request, settings.max_body_bytes)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise ApiError(
                415,
                f"send `Content-Type: application/json`, not {content_type or 'none'!r}",
                kind="UnsupportedMediaType",
            )
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
        parsed = parse_request(
            {**payload, "stream": True}, handler_settings.limits, handler_settings.defaults, tokenizers
        )
        if "webhook" in job_fields:
            webhooks.check_webhook(job_fields["webhook"], settings)
        if "metadata" in job_fields:
            _check_metadata(job_fields["metadata"])
        body = json.dumps(payload, separators=(",", ":")).encode()
        fingerprint = hashlib.sha256(body + json.dumps(job_fields, sort_keys=True).encode()).hexdigest()
        state, queue = services().state, services().queue
        # 3. + 4. + 5.
        job_id = "job_" + secrets.token_urlsafe(18)
        idempotency = None
        idempotency_key = request.headers.get("idempotency-key")
        if idempotency_key is not None:
            if not 1 <= len(idempotency_key) <= 255 or not idempotency_key.isprintable():
                raise ApiError(400, "`Idempotency-Key` must be 1-255 printable characters", kind="InvalidRequest")
            idempotency = (state.idempotency_key(owner, idempotency_key), fingerprint)
        fields = {
            "total_steps": parsed.denoising_steps,
            "prompt": parsed.prompt[:200],
            **{name: value for name, value in job_fields.items()},
        }
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
                raise ApiError(
                    429,
                    f"the queue is full ({refused.pending} jobs waiting)",
                    kind="QueueFull",
                    headers={"Retry-After": "30"},
                ) from None
            raise ApiError(
                429,
                f"this key has {settings.max_open_per_key} unfinished jobs, the most allowed",
                kind="TooManyJobs",
                headers={"Retry-After": "10"},
            ) from None
        if claimed is not None:
            existing_id, _, existing_print = claimed.partition(" ")
            if existing_print != fingerprint:
                raise ApiError(409, "this Idempotency-Key was used with another request body", kind="Conflict")
            record = await state.record(existing_id)
            answer = await view(record, base_url(request)) if record else {"job_id": existing_id}
            return JSONResponse(
                answer, status_code=200, headers={"Idempotent-Replayed": "true", "Location": f"/jobs/{existing_id}"}
            )
        try:
            await queue.enqueue(services().generation_job(job_id))
        except BaseException:
            await state.withdraw(job_id, owner, idempotency)  # nothing of a failed submit stays, its claim neither
            raise
        # 6.
        headers = {"Location": f"/jobs/{job_id}"}
        if wait_s:
            record = await _wait_terminal(state, job_id, wait_s)
            headers["Preference-Applied"] = f"wait={wait_s:g}"
            if record["status"] in TERMINAL:
                return JSONResponse(await view(record, base_url(request)), status_code=200, headers=headers)
        record = await state.record(job_id)
        return JSONResponse(await view(record, base_url(request)), status_code=202, headers=headers)

    # -- one job ---------------------------------------------------------------------------------------

    @app.get("/jobs/{job_id}")
    async def get_job(job_id: str, request: Request) -> JSONResponse:
        record = await owned_record(job_id, owner_of(request.headers.get("authorization")))
        return JSONResponse(await view(record, base_url(request)))

    @app.delete("/jobs/{job_id}")
    async def cancel_job(job_id: str, request: Request) -> JSONResponse:
        """Cancel: a pending job never reaches TorchServe; a running one's stream is closed by its dispatcher
        (continuous batching frees it within a step; static batching finishes the batch and the image is
        discarded). A finished job answers 409."""
        record = await owned_record(job_id, owner_of(request.headers.get("authorization")))
        if record["status"] in TERMINAL:
            raise ApiError(
                409, f"job {job_id} is already {shown_status(record, settings.result_ttl_s)}", kind="Conflict"
            )
        state, queue = services().state, services().queue
        await state.transition(job_id, "canceled", canceled_from=record["status"])
        job = await queue.job(job_id)
        if job is not None and job.status not in (Status.COMPLETE, Status.FAILED, Status.ABORTED):
            await queue.abort(job, "canceled", ttl=settings.job_timeout_s)
        return JSONResponse(await view(await state.record(job_id), base_url(request)))

    @app.get("/jobs/{job_id}/image")
    async def get_image(job_id: str, request: Request, index: int = 0) -> Response:
        record = await owned_record(job_id, owner_of(request.headers.get("authorization")))
        status = shown_status(record, settings.result_ttl_s)
        if status == "expired":
            raise ApiError(410, f"job {job_id} expired: results are kept {settings.result_ttl_s} s", kind="Expired")
        if status != "completed":
            raise ApiError(409, f"job {job_id} is {status}: no image", kind="NotReady")
        images = json.loads(record["images"])
        if not 0 <= index < len(images):
            raise InvalidRequest(f"`index` must be in 0..{len(images) - 1} but is {index}", field="index", value=index)
        store = services().store
        url = store.presigned_url(images[index], expires_s=300)
        if url:
            return RedirectResponse(url, status_code=307)
        data = await store.get(images[index])
        if data is None:
            raise ApiError(410, f"job {job_id}'s image is no longer stored", kind="Expired")
        headers = {"X-Seed": str(json.loads(record.get("seeds") or "[null]")[index]), "Cache-Control": "private"}
        return Response(data, media_type=record.get("content_type", "image/png"), headers=headers)

    # -- events: SSE and WebSocket, the same log -------------------------------------------------------

    @app.get("/jobs/{job_id}/events")
    async def events(job_id: str, request: Request) -> StreamingResponse:
        """Server-Sent Events: the job's whole history, then live events until it finishes. Resume with
        ``Last-Event-ID`` (or ``?after=``); a comment every 15 s keeps proxies from closing the stream."""
        await owned_record(job_id, owner_of(request.headers.get("authorization")))
        after = request.headers.get("last-event-id") or request.query_params.get("after") or "0-0"
        if not _plausible_event_id(after):
            raise InvalidRequest(
                f"`Last-Event-ID` must be a stream id like 1700000000000-0 but is {after!r}",
                field="Last-Event-ID",
                value=after,
            )

        async def stream():
            async for entry_id, kind, data in _follow(services(), job_id, after):
                if entry_id is None:
                    yield ": keep-alive\n\n"
                    continue
                yield f"id: {entry_id}\nevent: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    @app.websocket("/ws/jobs/{job_id}")
    async def websocket_events(websocket: WebSocket, job_id: str) -> None:
        """The same events as JSON messages ``{"id", "event", "data"}``. Browsers cannot set headers on a
        WebSocket: the key may come as the first message ``{"authorization": "Bearer <key>"}``."""
        await websocket.accept()
        try:
            authorization = websocket.headers.get("authorization")
            if authorization is None and settings.auth:
                first = await asyncio.wait_for(websocket.receive_json(), timeout=10)
                authorization = first.get("authorization") if isinstance(first, dict) else None
            owner = owner_of(authorization)
            await owned_record(job_id, owner)
            async for entry_id, kind, data in _follow(services(), job_id, websocket.query_params.get("after", "0-0")):
                if entry_id is not None:
                    await websocket.send_json({"id": entry_id, "event": kind, "data": data})
            await websocket.close()
        except ApiError as exc:
            await websocket.send_json(error_body(exc.status, exc.kind, exc.message))
            await websocket.close(code=4000 + exc.status)
        except (WebSocketDisconnect, asyncio.TimeoutError):
            with contextlib.suppress(Exception):
                await websocket.close()

    # -- lists, queue, health, metrics, page -----------------------------------------------------------

    @app.get("/jobs")
    async def recent_jobs(request: Request) -> JSONResponse:
        owner = owner_of(request.headers.get("authorization"))
        state = services().state
        ids = [i.decode() for i in await services().redis.zrevrange(state.recent_key(owner), 0, RECENT_JOBS - 1)]
        jobs = []
        for job_id in ids:
            record = await services().state.record(job_id)
            if record is not None:
                jobs.append(await view(record, base_url(request)))
        return JSONResponse({"jobs": jobs})

    @app.get("/queue")
    async def queue_info(request: Request) -> JSONResponse:
        owner_of(request.headers.get("authorization"))
        queued, running = await services().queue.depth()
        rate, mean_run = await services().state.throughput()
        return JSONResponse(
            {
                "depth": queued,
                "running": running,
                "throughput_jobs_per_s": None if rate is None else round(rate, 4),
                "mean_run_s": None if mean_run is None else round(mean_run, 3),
                "estimated_drain_s": None if not rate else round(queued / rate, 1),
                "eta_model": "estimated_time = (queue_position + 1) / throughput + mean_run_s, over the last 60 s",
            }
        )

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        try:
            await asyncio.wait_for(services().redis.ping(), timeout=2)
        except Exception as exc:
            return JSONResponse({"status": "unhealthy", "redis": repr(exc)[:200]}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(await metrics.render(services()), media_type="text/plain; version=0.0.4")

    @app.get("/")
    async def page() -> HTMLResponse:
        return HTMLResponse(
            PAGE.read_text(),
            headers={
                "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self' "
                "'unsafe-inline'; script-src 'self' 'unsafe-inline'",
                "X-Content-Type-Options": "nosniff",
            },
        )

    return app


async def _follow(services: Services, job_id: str, after: str):
    """(id, event, data) from ``after`` on until the job's terminal status event; (None, ...) every 15 s idle."""
    idle_since = time.monotonic()
    while True:
        entries = await services.state.events(job_id, after, block_ms=1000)
        for entry_id, kind, data in entries:
            after = entry_id
            yield entry_id, kind, data
            if kind == "status" and data.get("status") in TERMINAL:
                return
        if entries:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > 15:
            idle_since = time.monotonic()
            yield None, None, None
        if not entries and not await services.redis.exists(services.state.events_key(job_id)):
            return  # expired: nothing more will come


async def _read_limited(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over {limit} bytes", kind="TooLarge")
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


def _plausible_id(job_id: str) -> bool:
    return job_id.startswith("job_") and len(job_id) <= 40 and all(c.isalnum() or c in "_-" for c in job_id)


def _plausible_event_id(value: str) -> bool:
    left, _, right = value.partition("-")
    return left.isdigit() and right.isdigit() and len(value) <= 40


async def _wait_terminal(state, job_id: str, wait_s: float) -> dict[str, str]:
    deadline, after = time.monotonic() + wait_s, "0-0"
    while (left := deadline - time.monotonic()) > 0:
        for entry_id, kind, data in await state.events(job_id, after, block_ms=max(int(left * 1000), 1)):
            after = entry_id
            if kind == "status" and data.get("status") in TERMINAL:
                return await state.record(job_id)
    return await state.record(job_id)


def app_from_environment() -> FastAPI:
    """``uvicorn jobs.gateway:app``: settings from $SDXL_JOBS_CONFIG and SDXL_JOBS_* variables."""
    return create_app(JobSettings.load())


def __getattr__(name: str) -> Any:  # `app` is built on first use, so importing this module has no effect
    if name == "app":
        return app_from_environment()
    raise AttributeError(name)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Run the job API gateway.")
    parser.add_argument("--config", help="jobs yaml (default: $SDXL_JOBS_CONFIG, then built-in defaults)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    settings = JobSettings.load(args.config)
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level="warning",
        ws="websockets",
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
