"""One job and the caller's jobs: GET/DELETE /jobs/{id}, GET /jobs/{id}/image, GET /jobs/{id}/events (SSE),
WS /ws/jobs/{id} (the same events), GET /jobs (this key's recent jobs)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from saq import Status

from handler.contract.errors import InvalidRequest, ServingError, error_document
from handler.wire.events import STATUS

from ..access import owned_record, owner_of, services, view
from ..errors import Conflict, Expired, NotReady
from ..services import Services
from ..state import TERMINAL
from ..views import shown_status

router = APIRouter()


@router.get("/jobs/{job_id}", summary="A job: status, progress, queue position, result")
async def get_job(job_id: str, request: Request) -> JSONResponse:
    record = await owned_record(request, job_id, owner_of(request))
    return JSONResponse(await view(request, record))


@router.delete("/jobs/{job_id}", summary="Cancel a job")
async def cancel_job(job_id: str, request: Request) -> JSONResponse:
    """Cancel: a pending job never reaches TorchServe; a running one's stream is closed by its dispatcher
    (continuous batching frees it within a step; static batching finishes the batch, holding the dispatcher's
    slot meanwhile, and the image is discarded). A finished job answers 409."""
    settings = request.app.state.settings
    record = await owned_record(request, job_id, owner_of(request))
    if record["status"] in TERMINAL:
        raise Conflict(f"job {job_id} is already {shown_status(record, settings.result_ttl_s)}")
    state, queue = services(request).state, services(request).queue
    await state.transition(job_id, "canceled", canceled_from=record["status"])
    job = await queue.job(job_id)
    if job is not None and job.status not in (Status.COMPLETE, Status.FAILED, Status.ABORTED):
        await queue.abort(job, "canceled", ttl=settings.job_timeout_s)
    return JSONResponse(await view(request, await state.record(job_id)))


@router.get("/jobs/{job_id}/image", summary="A finished job's image")
async def get_image(job_id: str, request: Request, index: int = 0) -> Response:
    settings = request.app.state.settings
    record = await owned_record(request, job_id, owner_of(request))
    status = shown_status(record, settings.result_ttl_s)
    if status == "expired":
        raise Expired(f"job {job_id} expired: results are kept {settings.result_ttl_s} s")
    if status != "completed":
        raise NotReady(f"job {job_id} is {status}: no image")
    images = json.loads(record["images"])
    if not 0 <= index < len(images):
        raise InvalidRequest(f"`index` must be in 0..{len(images) - 1} but is {index}", field="index", value=index)
    store = services(request).store
    url = store.presigned_url(images[index], expires_s=300)
    if url:
        return RedirectResponse(url, status_code=307)
    data = await store.get(images[index])
    if data is None:
        raise Expired(f"job {job_id}'s image is no longer stored")
    headers = {"X-Seed": str(json.loads(record.get("seeds") or "[null]")[index]), "Cache-Control": "private"}
    return Response(data, media_type=record.get("content_type", "image/png"), headers=headers)


@router.get("/jobs/{job_id}/events", summary="A job's events (Server-Sent Events)")
async def events(job_id: str, request: Request) -> StreamingResponse:
    """Server-Sent Events: the job's whole history, then live events until it finishes. Resume with
    ``Last-Event-ID`` (or ``?after=``); a comment every 15 s keeps proxies from closing the stream."""
    await owned_record(request, job_id, owner_of(request))
    after = request.headers.get("last-event-id") or request.query_params.get("after") or "0-0"
    if not _plausible_event_id(after):
        raise InvalidRequest(
            f"`Last-Event-ID` must be a stream id like 1700000000000-0 but is {after!r}",
            field="Last-Event-ID",
            value=after,
        )

    async def stream():
        async for entry_id, kind, data in follow(services(request), job_id, after):
            if entry_id is None:
                yield ": keep-alive\n\n"
                continue
            yield f"id: {entry_id}\nevent: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


@router.websocket("/ws/jobs/{job_id}")
async def websocket_events(websocket: WebSocket, job_id: str) -> None:
    """The same events as JSON messages ``{"id", "event", "data"}``. Browsers cannot set headers on a
    WebSocket: the key may come as the first message ``{"authorization": "Bearer <key>"}``."""
    await websocket.accept()
    try:
        authorization = websocket.headers.get("authorization")
        if authorization is None and websocket.app.state.settings.auth:
            first = await asyncio.wait_for(websocket.receive_json(), timeout=10)
            authorization = first.get("authorization") if isinstance(first, dict) else None
        owner = owner_of(websocket, authorization or "")
        await owned_record(websocket, job_id, owner)
        async for entry_id, kind, data in follow(
            services(websocket), job_id, websocket.query_params.get("after", "0-0")
        ):
            if entry_id is not None:
                await websocket.send_json({"id": entry_id, "event": kind, "data": data})
        await websocket.close()
    except ServingError as exc:
        await websocket.send_json({"error": error_document(exc)})
        await websocket.close(code=4000 + exc.status)
    except (WebSocketDisconnect, asyncio.TimeoutError):
        with contextlib.suppress(Exception):
            await websocket.close()


@router.get("/jobs", summary="This key's recent jobs")
async def recent_jobs(request: Request) -> JSONResponse:
    state = services(request).state
    jobs = []
    for job_id in await state.recent(owner_of(request)):
        record = await state.record(job_id)
        if record is not None:
            jobs.append(await view(request, record))
    return JSONResponse({"jobs": jobs})


async def follow(jobs: Services, job_id: str, after: str):
    """(id, event, data) from ``after`` on until the job's terminal status event; (None, ...) every 15 s idle."""
    idle_since = time.monotonic()
    while True:
        entries = await jobs.state.events(job_id, after, block_ms=1000)
        for entry_id, kind, data in entries:
            after = entry_id
            yield entry_id, kind, data
            if kind == STATUS and data.get("status") in TERMINAL:
                return
        if entries:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > 15:
            idle_since = time.monotonic()
            yield None, None, None
        if not entries and not await jobs.state.has_events(job_id):
            return  # expired: nothing more will come


def _plausible_event_id(value: str) -> bool:
    left, _, right = value.partition("-")
    return left.isdigit() and right.isdigit() and len(value) <= 40
