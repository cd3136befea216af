"""One request's denoising state (its own embeddings, noise, scheduler and step counter, and the refiner stage it
hands over to), and the per-request helpers the denoiser's seams use."""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from handler.contract.request import GenerationRequest
from handler.model.init_latents import Inpainting


def image_seeds(request: GenerationRequest) -> list[int]:
    assert request.seed is not None, "seed must be resolved before generation"
    return [request.seed + i for i in range(request.num_images_per_prompt)]


@dataclass(eq=False)
class LaterStage:
    """The refiner's part of a request (:mod:`handler.model.refiner`): what its state switches to at the hand-over."""

    guidance: bool
    embeds: torch.Tensor
    pooled: torch.Tensor
    time_ids: torch.Tensor
    scheduler: Any
    timesteps: torch.Tensor
    step_kwargs: dict[str, Any]


@dataclass(eq=False)  # identity: states hold tensors, and two requests may be equal yet separate
class RequestState:
    """Everything one request needs between denoising steps."""

    request: GenerationRequest
    guidance: bool
    embeds: torch.Tensor  # (rows, 77, D): [negative images..., positive images...] with guidance
    pooled: torch.Tensor  # (rows, P)
    time_ids: torch.Tensor  # (rows, 6)
    latents: torch.Tensor | None  # (images, C, h, w); None until prepared (:meth:`Denoiser.prepare_latents`)
    scheduler: Any
    timesteps: torch.Tensor  # its own: all of the schedule, or its end (img2img strength)
    generators: list[torch.Generator]  # one per image, seeded seed + i
    step_kwargs: dict[str, Any] = field(default_factory=dict)  # extra arguments of its scheduler's step()
    guidance_condition: torch.Tensor | None = None  # (images, D): a guidance-distilled UNet's guidance input
    unet_extra: torch.Tensor | None = None  # an inpainting UNet's extra input channels, per UNet row
    inpainting: Inpainting | None = None  # a 4-channel UNet's inpainting: blended back after each step
    step: int = 0  # steps done, over all its stages
    model: str = "base"  # the UNet of its current stage: "base" or "refiner"
    stage_start: int = 0  # steps done before its current stage
    later: LaterStage | None = None  # the refiner stage still to come
    forwards: int = 0  # UNet forwards it took part in
    started: float = field(default_factory=time.perf_counter)
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def total_steps(self) -> int:
        return self.stage_start + len(self.timesteps) + (len(self.later.timesteps) if self.later else 0)

    @property
    def stage_step(self) -> int:
        """Its step within the current stage (an index into ``timesteps``)."""
        return self.step - self.stage_start

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps

    @property
    def images(self) -> int:
        return self.request.num_images_per_prompt

    @property
    def unet_rows(self) -> int:
        """Rows this request adds to a UNet batch (guidance doubles them)."""
        return self.images * (2 if self.guidance else 1)


def scheduler_step_kwargs(scheduler: Any, generators: list[torch.Generator], eta: float | None = None) -> dict:
    """What THIS scheduler's ``step`` takes, decided per request: the whole per-image generator list (a
    sampler that draws noise while it steps, e.g. Euler ancestral, then gives image i the noise of seed + i)
    and ``eta`` where the sampler has one and the request sets it."""
    parameters = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "generator" in parameters:
        kwargs["generator"] = generators
    if eta is not None and "eta" in parameters:
        kwargs["eta"] = eta
    return kwargs


def keep_unmasked(image: Any, request: GenerationRequest) -> Any:
    """Inpainting with ``keep_unmasked``: the input's own pixels outside the mask (the mask as alpha)."""
    if request.mask_image is None or not request.keep_unmasked:
        return image
    from PIL import Image

    return Image.composite(image, request.image.pixels, request.mask_image.pixels)
