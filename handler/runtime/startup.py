"""A core from a model yaml, warmed up before the server reports READY: what both adapters call at startup."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from handler.contract.parse import parse_request
from handler.contract.request import GenerationRequest
from handler.contract.settings import HandlerSettings
from handler.model.loading import load_pipeline
from handler.runtime.core import Core

log = logging.getLogger(__name__)


def warm_up(core: Core) -> list[float]:
    """Generate once at every configured warmup shape, then once from an init image at the first shape (the
    VAE encoder's first call) and, with a refiner, once handed over to it, so the first user request is fast."""
    seconds, requests = [], []
    bounds = (core.settings.limits, core.settings.defaults)
    for shape in core.settings.warmup_shapes():
        body = {"prompt": "warmup", "seed": 0, "width": shape.width, "height": shape.height}
        request = parse_request({**body, "num_inference_steps": shape.num_inference_steps}, *bounds)
        requests.append((str(shape), [request] * shape.batch_images))
    requests.append(("img2img", [warmup_img2img(requests[0][1][0])]))
    if core.loaded.refiner is not None:
        first = requests[0][1][0]
        body = {"prompt": "warmup", "seed": 0, "width": first.width, "height": first.height}
        refined = {**body, "num_inference_steps": 4, "denoising_end": 0.5}
        requests.append(("refiner", [parse_request(refined, *bounds)]))
    for name, batch in requests:
        started = time.perf_counter()
        core.engine.generate(batch)
        seconds.append(time.perf_counter() - started)
        log.info("warmup %s: %.2f s", name, seconds[-1])
    return seconds


def warmup_img2img(request: GenerationRequest) -> GenerationRequest:
    """``request`` from a grey init image of its size, at strength 1 (every step runs)."""
    from PIL import Image

    from handler.contract.images import InputImage

    size = (request.width, request.height)
    image = InputImage(Image.new("RGB", size, (128, 128, 128)), "warmup", "PNG", 0, *size)
    return replace(request, image=image, strength=1.0, resize_mode="none")


def build_core(
    model_dir: str, model_yaml: dict[str, Any] | None, gpu_id: int | None = None, keep_images: bool = False
) -> Core:
    """The core the model yaml describes, on the pipeline its ``handler.model_path`` names (else the one in
    ``model_dir``), warmed up (``keep_images``: see :class:`Core`)."""
    settings = HandlerSettings.from_yaml(model_yaml)
    core = Core(load_pipeline(settings.model_path or model_dir, settings, gpu_id), settings, keep_images=keep_images)
    warm_up(core)
    return core
