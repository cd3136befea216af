"""A core from a model yaml, warmed up before the server reports READY: what both adapters call at startup."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from handler.contract.errors import ConfigError, TimeBudgetExceeded
from handler.contract.parse import parse_request
from handler.contract.request import GenerationRequest
from handler.contract.settings import HandlerSettings, check_defaults
from handler.model.loading import load_pipeline
from handler.runtime.core import Core
from handler.runtime.step_policy import StepClock

log = logging.getLogger(__name__)

TORCHSERVE_STARTUP_TIMEOUT_S = 120  # TorchServe's startupTimeout when the model yaml sets none
STARTUP_MARGIN_S = 5.0  # the worker's own start before initialize, and the reply to the frontend


def warm_up(core: Core, budget_s: float | None = None) -> list[float]:
    """Generate once at every configured warmup shape, then once from an init image at the first shape (the
    VAE encoder's first call) and, with a refiner, once handed over to it, so the first user request is fast.

    Args:
        core (`Core`): the core to warm up.
        budget_s (`float`, defaults to None): seconds the whole warmup may take (what is left of TorchServe's
            ``startupTimeout``); past it, a ConfigError says which shape ran out and what to change.
    """
    seconds, requests = [], []
    bounds = (core.settings.limits, core.settings.defaults)
    for shape in core.settings.warmup_shapes():
        body = {"prompt": "warmup", "seed": 0, "width": shape.width, "height": shape.height}
        request = parse_request({**body, "num_inference_steps": shape.num_inference_steps}, *bounds)
        requests.append((f"{shape.width}x{shape.height} x{shape.batch_images}, {shape.num_inference_steps} steps",
                         [request] * shape.batch_images))  # fmt: skip
    requests.append(("img2img", [warmup_img2img(requests[0][1][0])]))
    if core.loaded.refiner is not None:
        first = requests[0][1][0]
        body = {"prompt": "warmup", "seed": 0, "width": first.width, "height": first.height}
        refined = {**body, "num_inference_steps": 4, "denoising_end": 0.5}
        requests.append(("refiner", [parse_request(refined, *bounds)]))
    deadline = None if budget_s is None else time.perf_counter() + budget_s
    for name, batch in requests:
        started = time.perf_counter()
        left = None if deadline is None else max(deadline - started, 0.001)
        log.info("warmup %s: starting%s", name, "" if left is None else f" ({left:.0f} s of the start-up budget left)")
        outcomes = core.engine.generate([replace(request, timeout_s=left) for request in batch])
        seconds.append(time.perf_counter() - started)
        if any(isinstance(outcome, TimeBudgetExceeded) for outcome in outcomes):
            raise ConfigError(
                f"warmup {name} did not finish within the start-up budget ({budget_s:.0f} s of TorchServe's "
                f"startupTimeout, after loading): list smaller shapes in handler.warmup (or smaller "
                "handler.defaults width/height), or raise startupTimeout in the model yaml"
            )
        failed = next((outcome for outcome in outcomes if isinstance(outcome, BaseException)), None)
        if failed is not None:
            raise failed
        log.info("warmup %s: %.2f s", name, seconds[-1])
    # Warmup steps pay one-time costs (allocation, first kernels): deadline estimates start from real traffic.
    core.engine.clock = StepClock()
    return seconds


def warmup_img2img(request: GenerationRequest) -> GenerationRequest:
    """``request`` from a grey init image of its size, at strength 1 (every step runs)."""
    from PIL import Image

    from handler.contract.images import InputImage

    size = (request.width, request.height)
    image = InputImage(Image.new("RGB", size, (128, 128, 128)), "warmup", "PNG", 0, *size)
    return replace(request, image=image, strength=1.0, resize_mode="none")


def build_core(
    model_dir: str,
    model_yaml: dict[str, Any] | None,
    gpu_id: int | None = None,
    keep_images: bool = False,
    serving_name: str | None = None,
) -> Core:
    """The core the model yaml describes, on the pipeline its ``handler.model_path`` names (else the one in
    ``model_dir``), warmed up within TorchServe's ``startupTimeout`` (``keep_images``, ``serving_name``: see
    :class:`Core`).

    Without a yaml (an archive built without ``--config-file``), or a yaml whose ``handler.defaults`` leave out
    ``width`` and ``height``, the default size is the model's own (diffusers' rule: the UNet's sample size times
    the VAE's scale factor): 1024 for SDXL, 64 for the tiny model.
    """
    # 1. Settings, and the pipeline they name.
    started = time.perf_counter()
    settings = HandlerSettings.from_yaml(model_yaml)
    loaded = load_pipeline(settings.model_path or model_dir, settings, gpu_id)

    # 2. The model's own size, where the yaml names none.
    given = ((model_yaml or {}).get("handler") or {}).get("defaults") or {}
    if "width" not in given and "height" not in given:
        side = native_size(loaded.pipeline)
        settings = settings.with_changes(defaults=replace(settings.defaults, width=side, height=side))
        check_defaults(settings.limits, settings.defaults)
        log.info("default size %dx%d: the model's own (handler.defaults sets no width/height)", side, side)

    # 3. Warm up in what is left of TorchServe's start-up timeout (a worker past it is killed and restarted).
    core = Core(loaded, settings, keep_images=keep_images, serving_name=serving_name)
    timeout = float((model_yaml or {}).get("startupTimeout", TORCHSERVE_STARTUP_TIMEOUT_S))
    warm_up(core, budget_s=timeout - (time.perf_counter() - started) - STARTUP_MARGIN_S)
    return core


def native_size(pipeline: Any) -> int:
    """diffusers' default side: ``unet.config.sample_size x vae_scale_factor``."""
    return int(pipeline.unet.config.sample_size * pipeline.vae_scale_factor)
