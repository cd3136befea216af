"""OpenAI's Images API: POST /v1/images/generations, POST /v1/images/edits, GET /v1/models, on the same contract,
queue, batching and keys as POST /generate (the mapping: :mod:`jobs.protocols.openai_images`).

Synchronous as OpenAI's clients expect: each request is a job (queued, retried on a worker's death, listed in
GET /jobs) that the route waits for, at most ``max_wait_s``; past it, a 504 naming the job, which goes on.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from handler.contract.errors import InvalidRequest, ServingError
from handler.wire.events import PREVIEW, STATUS

from ..access import owner_of, services
from ..errors import UnsupportedMediaType
from ..protocols.openai_images import error_body, generation_body, preview_every
from ..state import TERMINAL
from ..submission import finished, json_body, stored_images, submit_job, wait_terminal

router = APIRouter(prefix="/v1")
STARTED = int(time.time())
MAX_FORM_BYTES = 32 * 2**20
PARTIAL_FIELDS = {"size": "auto", "quality": "auto", "background": "opaque", "output_format": "jpeg"}  # previews


@router.get("/models", summary="OpenAI: the served model")
async def models(request: Request) -> JSONResponse:
    owner_of(request)
    name = request.app.state.settings.model_name
    return JSONResponse(
        {"object": "list", "data": [{"id": name, "object": "model", "created": STARTED, "owned_by": "sdxl-torchserve"}]}
    )


@router.post("/images/generations", summary="OpenAI: create images")
async def generations(request: Request) -> Any:
    owner = owner_of(request)
    payload, options = generation_body(await json_body(request), request.app.state.settings.model_name)
    return await answer(request, owner, payload, options)


@router.post("/images/edits", summary="OpenAI: edit an image (img2img; with a mask, inpainting)")
async def edits(request: Request) -> Any:
    """multipart/form-data as OpenAI's SDKs send it: ``image`` (or ``image[]``, one file), optional ``mask`` (a
    PNG with an alpha channel: transparent = repaint, OpenAI's convention; converted to our white = repaint),
    and the generation fields as form values (numbers and lists as JSON text)."""
    owner = owner_of(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise UnsupportedMediaType(f"send multipart/form-data (OpenAI's edits), not {content_type or 'none'!r}")
    form = await request.form(max_files=3, max_fields=64, max_part_size=MAX_FORM_BYTES)
    images = form.getlist("image") + form.getlist("image[]")
    if len(images) != 1 or isinstance(images[0], str):
        raise InvalidRequest(f"send exactly one `image` file, not {len(images)}", field="image")
    body: dict[str, Any] = {}
    for name, value in form.multi_items():
        if name in ("image", "image[]", "mask"):
            continue
        body[name] = value if name in TEXT_FIELDS else _form_value(value)
    payload, options = generation_body(body, request.app.state.settings.model_name)
    payload["image"] = base64.b64encode(await images[0].read()).decode()
    mask = form.get("mask")
    if mask is not None:
        if isinstance(mask, str):
            raise InvalidRequest("`mask` must be a file", field="mask")
        payload["mask_image"] = openai_mask(await mask.read())
    if "width" in payload and "resize_mode" not in payload:
        payload["resize_mode"] = "resize"  # OpenAI answers at `size` whatever the image's size
    return await answer(request, owner, payload, options)


TEXT_FIELDS = ("prompt", "negative_prompt", "prompt_2", "negative_prompt_2", "size", "model", "user", "quality",
               "style", "background", "moderation", "response_format", "output_format", "sampler", "schedule",
               "resize_mode", "aspect_ratio")  # fmt: skip


def _form_value(text: str) -> Any:
    """A form field's text as the JSON value it spells (``"42"`` -> 42), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def openai_mask(data: bytes) -> str:
    """OpenAI's mask (transparent = edit) as ours: a base64 grayscale PNG, white = repaint."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidRequest(f"`mask` is not a readable image: {exc}", field="mask") from None
    if "A" not in image.getbands():
        raise InvalidRequest(
            f"`mask` must have an alpha channel (transparent = the area to edit) but is {image.mode}",
            field="mask",
            value=image.mode,
        )
    repaint = image.getchannel("A").point(lambda alpha: 255 if alpha == 0 else 0)
    out = io.BytesIO()
    repaint.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


async def answer(request: Request, owner: str, payload: dict[str, Any], options: dict[str, Any]) -> Any:
    """Queue the job, wait for it (or stream its previews), answer in OpenAI's shape."""
    settings, model = request.app.state.settings, request.app.state.handler_settings
    if options["partial_images"]:
        steps = payload.get("num_inference_steps", model.defaults.num_inference_steps)
        payload["preview_every"] = preview_every(steps if isinstance(steps, int) else 1, options["partial_images"])
    job_fields = {"metadata": {"user": options["user"]}} if options["user"] else {}
    submitted = await submit_job(request, owner, payload, job_fields, request.headers.get("idempotency-key"))
    if options["stream"]:
        return StreamingResponse(
            stream(request, submitted.job_id, options), media_type="text/event-stream", headers=_job_header(submitted)
        )
    record = await wait_terminal(request, submitted.job_id, settings.max_wait_s)
    document = await images_response(request, record, options["response_format"])
    return JSONResponse(document, headers=_job_header(submitted))


def _job_header(submitted: Any) -> dict[str, str]:
    return {"X-Job-Id": submitted.job_id, "Location": f"/jobs/{submitted.job_id}"}


async def images_response(request: Request, record: dict[str, str], response_format: str) -> dict[str, Any]:
    """OpenAI's ImagesResponse of a finished job, with our seeds and parameters under ``sdxl``."""
    job_id = record["id"]
    finished(record, request.app.state.settings.max_wait_s)
    keys, parameters = json.loads(record["images"]), json.loads(record["parameters"])
    if response_format == "url":  # a presigned URL where the store makes them (S3), else the gateway's route
        base, store = str(request.base_url).rstrip("/"), services(request).store
        urls = [store.presigned_url(key, expires_s=3600) or f"{base}/jobs/{job_id}/image?index={i}"
                for i, key in enumerate(keys)]  # fmt: skip
        data = [{"url": url, "revised_prompt": None} for url in urls]
    else:
        images = await stored_images(request, record)
        data = [{"b64_json": base64.b64encode(image).decode(), "revised_prompt": None} for image in images]
    return {
        "created": int(float(record.get("finished_at") or time.time())),
        "data": data,
        "output_format": parameters["output_format"],
        "size": f"{parameters['width']}x{parameters['height']}",
        "sdxl": {"job_id": job_id, "seeds": json.loads(record["seeds"]), "parameters": parameters},
    }


async def stream(request: Request, job_id: str, options: dict[str, Any]) -> AsyncIterator[bytes]:
    """OpenAI's image-generation stream: ``image_generation.partial_image`` from our previews (at most
    ``partial_images``), then one ``image_generation.completed`` per image; a failure is an ``error`` event."""
    state, after, sent = services(request).state, "0-0", 0
    while True:
        for entry_id, kind, data in await state.events(job_id, after, block_ms=1000):
            after = entry_id
            if kind == PREVIEW and sent < options["partial_images"]:
                event = {"type": "image_generation.partial_image", "b64_json": data["images"][0],
                         "partial_image_index": sent, **PARTIAL_FIELDS, "created_at": int(time.time())}  # fmt: skip
                sent += 1
                yield _sse(event["type"], event)
            if kind == STATUS and data.get("status") in TERMINAL:
                record = await state.record(job_id)
                try:
                    document = await images_response(request, record, "b64_json")
                except ServingError as exc:
                    yield _sse("error", error_body(exc))
                    return
                for image in document["data"]:
                    yield _sse("image_generation.completed", {
                        "type": "image_generation.completed", "b64_json": image["b64_json"],
                        "created_at": document["created"], "size": document["size"],
                        "output_format": document["output_format"], "quality": "auto", "background": "opaque",
                        "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
                                  "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}},
                    })  # fmt: skip
                return


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
