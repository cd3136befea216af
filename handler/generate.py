"""Run one group of requests as ONE batched SDXL pipeline call, each image with its own seeded generator.

A request's images depend only on that request: its prompts are encoded on their own (batch size 1, so
the text encoders never see batch-mates) and each image's noise comes from its own CPU generator seeded
with ``seed + i`` (CPU generators give the same noise whatever the device).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .schema import GenerationRequest


def image_seeds(request: GenerationRequest) -> list[int]:
    assert request.seed is not None, "seed must be resolved before generation"
    return [request.seed + i for i in range(request.num_images_per_prompt)]


@dataclass
class GroupResult:
    images: list[list[Any]]  # per request, its PIL images
    timings_ms: dict[str, float] = field(default_factory=dict)


def uses_guidance(pipeline: Any, guidance_scale: float) -> bool:
    """The pipeline's own rule: guidance doubles the UNet batch only above 1 and without a guidance-distilled UNet."""
    return guidance_scale > 1 and pipeline.unet.config.time_cond_proj_dim is None


def encode_prompts(pipeline: Any, device: torch.device, request: GenerationRequest, guidance: bool) -> tuple:
    """This request's four embedding tensors, repeated for each of its images."""
    return pipeline.encode_prompt(
        prompt=request.prompt,
        prompt_2=request.prompt_2,
        device=device,
        num_images_per_prompt=request.num_images_per_prompt,
        do_classifier_free_guidance=guidance,
        # Empty means "no negative prompt": SDXL then uses zero embeddings (force_zeros_for_empty_prompt).
        negative_prompt=request.negative_prompt or None,
        negative_prompt_2=request.negative_prompt_2 or None,
    )


def generate_group(pipeline: Any, device: torch.device, requests: list[GenerationRequest]) -> GroupResult:
    """Generate every image of ``requests`` (which share size, steps and guidance) in one pipeline call."""
    first = requests[0]
    guidance = uses_guidance(pipeline, first.guidance_scale)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    with torch.inference_mode():
        # 1. Prompts, per request, concatenated in request order.
        per_request = [encode_prompts(pipeline, device, r, guidance) for r in requests]
        embeds, negative, pooled, negative_pooled = (
            None if parts[0] is None else torch.cat(parts) for parts in zip(*per_request, strict=True)
        )
        encoded = time.perf_counter()
        timings["encode_prompt"] = (encoded - started) * 1000

        # 2. One generator per image.
        generators = [torch.Generator("cpu").manual_seed(s) for r in requests for s in image_seeds(r)]

        # 3. One pipeline call; the step callback marks where denoising ends and VAE decoding begins.
        denoised_at = [encoded]

        def mark_step(pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
            denoised_at[0] = time.perf_counter()
            return kwargs

        output = pipeline(
            prompt_embeds=embeds,
            negative_prompt_embeds=negative,
            pooled_prompt_embeds=pooled,
            negative_pooled_prompt_embeds=negative_pooled,
            num_inference_steps=first.num_inference_steps,
            guidance_scale=first.guidance_scale,
            width=first.width,
            height=first.height,
            generator=generators,
            output_type="pil",
            callback_on_step_end=mark_step,
        )
    finished = time.perf_counter()
    timings["denoise"] = (denoised_at[0] - encoded) * 1000
    timings["vae_decode"] = (finished - denoised_at[0]) * 1000

    # 4. Hand each request its own images back.
    images, start = [], 0
    for request in requests:
        images.append(output.images[start : start + request.num_images_per_prompt])
        start += request.num_images_per_prompt
    return GroupResult(images=images, timings_ms=timings)
