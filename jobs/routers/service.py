"""The service around the jobs: GET /queue, GET /healthz, GET /metrics, GET / (the web page)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from handler.wire.events import STATUS, STREAM_EVENTS

from .. import metrics
from ..access import owner_of, services
from ..eta import ETA_MODEL
from ..state import STATUSES

PAGE = Path(__file__).parent.parent / "page.html"


def page_html() -> str:
    """The page, with the event and status names it reads filled in from their one definition."""
    names = {"EVENT": {name: name for name in (*STREAM_EVENTS, STATUS)}, "JOB_STATUS": {s: s for s in STATUSES}}
    text = PAGE.read_text()
    for constant, values in names.items():
        text = text.replace(f"/*{constant}*/{{}}", json.dumps(values))
    return text


router = APIRouter()


@router.get("/queue", summary="Queue depth, throughput and the ETA model")
async def queue_info(request: Request) -> JSONResponse:
    owner_of(request)
    queued, running = await services(request).queue.depth()
    rate = await services(request).state.service_rate()
    return JSONResponse(
        {
            "depth": queued,
            "running": running,
            "throughput_jobs_per_s": None if rate is None else round(rate.jobs_per_s, 4),
            "mean_run_s": None if rate is None else round(rate.mean_run_s, 3),
            "slots": None if rate is None else rate.slots,
            "estimated_drain_s": None if rate is None else round(rate.drain_s(queued, running), 1),
            "eta_model": ETA_MODEL,
        }
    )


@router.get("/healthz", summary="Ready when Redis answers")
async def healthz(request: Request) -> JSONResponse:
    try:
        await asyncio.wait_for(services(request).redis.ping(), timeout=2)
    except Exception as exc:
        return JSONResponse({"status": "unhealthy", "redis": repr(exc)[:200]}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/metrics", summary="Prometheus metrics (cluster-wide, from Redis)")
async def prometheus(request: Request) -> PlainTextResponse:
    return PlainTextResponse(await metrics.render(services(request)), media_type="text/plain; version=0.0.4")


@router.get("/", summary="The web page", include_in_schema=False)
async def page() -> HTMLResponse:
    return HTMLResponse(
        page_html(),
        headers={
            "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self' "
            "'unsafe-inline'; script-src 'self' 'unsafe-inline'",
            "X-Content-Type-Options": "nosniff",
        },
    )
