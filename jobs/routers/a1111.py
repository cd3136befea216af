"""The AUTOMATIC1111 API subset: POST /sdapi/v1/txt2img and /img2img (the mapping: :mod:`jobs.protocols.a1111`),
and the listings its clients read at start (sd-models, samplers, schedulers, scripts) and GET /sdapi/v1/progress.

Keys as everywhere (A1111 clients send HTTP basic auth: any user name, the key as the password). Synchronous,
as A1111 answers: each request is a job the route waits for, at most ``max_wait_s``.
"""

from __future__ import annotations

import base64
import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from handler.contract.errors import ServingError
from handler.contract.samplers import SAMPLERS
from handler.wire.events import PREVIEW

from ..access import owner_of, services
from ..protocols import a1111
from ..submission import finished, json_body, stored_images, submit_job, wait_terminal

router = APIRouter(prefix="/sdapi/v1")


@router.post("/txt2img", summary="A1111: text to image")
async def txt2img(request: Request) -> JSONResponse:
    return await generate(request, img2img=False)


@router.post("/img2img", summary="A1111: image to image, inpainting with a mask")
async def img2img(request: Request) -> JSONResponse:
    return await generate(request, img2img=True)


async def generate(request: Request, img2img: bool) -> JSONResponse:
    owner = owner_of(request)
    body = await json_body(request)
    try:
        payload, batches = a1111.generation_body(body, img2img)
        submitted = await submit_job(request, owner, payload)
    except ServingError as exc:
        raise a1111.renamed(exc) from None
    record = await wait_terminal(request, submitted.job_id, request.app.state.settings.max_wait_s)
    finished(record, request.app.state.settings.max_wait_s)
    images = []
    if body.get("send_images", True):
        images = [base64.b64encode(image).decode() for image in await stored_images(request, record)]
    parameters = json.loads(record["parameters"])
    echo = {name: value for name, value in body.items() if name not in ("init_images", "mask")}
    return JSONResponse(
        {"images": images, "parameters": echo, "info": a1111.info(record, parameters, batches)},
        headers={"X-Job-Id": submitted.job_id},
    )


@router.get("/sd-models", summary="A1111: the served model")
async def sd_models(request: Request) -> JSONResponse:
    owner_of(request)
    name = request.app.state.settings.model_name
    return JSONResponse(
        [{"title": name, "model_name": name, "hash": None, "sha256": None, "filename": name, "config": None}]
    )


@router.get("/samplers", summary="A1111: the samplers, by A1111's names (ours as aliases)")
async def samplers(request: Request) -> JSONResponse:
    owner_of(request)
    theirs = {ours: name for name, ours in a1111.SAMPLER_NAMES.items()}
    return JSONResponse([{"name": theirs.get(ours, ours), "aliases": [ours], "options": {}} for ours in SAMPLERS])


@router.get("/schedulers", summary="A1111: the schedules")
async def schedulers(request: Request) -> JSONResponse:
    owner_of(request)
    return JSONResponse([
        {"name": name, "label": label, "aliases": [ours], "default_rho": -1, "need_inner_model": False}
        for name, (label, ours) in a1111.SCHEDULERS.items()
    ])  # fmt: skip


@router.get("/scripts", summary="A1111: no scripts")
async def scripts(request: Request) -> JSONResponse:
    owner_of(request)
    return JSONResponse({"txt2img": [], "img2img": []})


@router.get("/progress", summary="A1111: this key's running job")
async def progress(request: Request) -> JSONResponse:
    """The newest unfinished job of this key: its progress (0..1), A1111's ``eta_relative`` (seconds left) and
    its latest preview when it streams them; zeros when none runs."""
    owner = owner_of(request)
    state = services(request).state
    for job_id in await state.recent(owner):
        record = await state.record(job_id)
        if record is None or record["status"] not in ("pending", "processing"):
            continue
        step, total = int(record.get("step") or 0), int(record.get("total_steps") or 0)
        previews = [data for _, kind, data in await state.events(job_id) if kind == PREVIEW]
        return JSONResponse({
            "progress": round(step / total, 4) if total else 0.0, "eta_relative": float(record.get("eta_s") or 0),
            "state": {"job": job_id, "job_count": 1, "sampling_step": step, "sampling_steps": total},
            "current_image": previews[-1]["images"][0] if previews else None, "textinfo": record["status"],
        })  # fmt: skip
    return JSONResponse({"progress": 0.0, "eta_relative": 0.0, "state": {"job_count": 0}, "current_image": None,
                         "textinfo": None})  # fmt: skip
