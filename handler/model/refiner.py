"""The SDXL refiner as diffusers' "ensemble of expert denoisers": the base denoises the high-noise part of the
schedule, the refiner (``handler.refiner_path``) the rest, on the same latents.

A request opts in with ``denoising_end`` (the hand-over point, diffusers' ``high_noise_frac``). Its base stage is
the base schedule's timesteps ``>=`` the cutoff ``round(T x (1 - denoising_end))`` (``StableDiffusionXLPipeline``
with ``denoising_end``); its refiner stage is a fresh scheduler of the refiner's config over the same
``num_inference_steps``, keeping the timesteps ``<`` the cutoff (``StableDiffusionXLImg2ImgPipeline`` with
``denoising_start``, latents handed over without new noise). A fresh scheduler means a multistep sampler's
history (DPM++ 2M's previous outputs, UniPC's corrector) restarts at the switch: the refiner's first step is a
first-order step, exactly as in diffusers' two-pipeline run. The per-image generators carry on (an ancestral
sampler keeps drawing from the same streams).

The refiner sees only ``text_encoder_2`` (as diffusers' refiner pipeline encodes: ``prompt``, with that encoder)
and SDXL's aesthetic-score micro-conditioning instead of the target size.
"""

from __future__ import annotations

from typing import Any


def timestep_cutoff(scheduler: Any, denoising_end: float) -> int:
    """diffusers' ``discrete_timestep_cutoff``: the base keeps timesteps >= it, the refiner those below."""
    train_steps = scheduler.config.num_train_timesteps
    return round(train_steps - denoising_end * train_steps)


def base_part(scheduler: Any, timesteps: Any, denoising_end: float) -> Any:
    """The base stage's timesteps (``StableDiffusionXLPipeline``'s ``denoising_end`` filter)."""
    cutoff = timestep_cutoff(scheduler, denoising_end)
    return timesteps[: sum(int(t >= cutoff) for t in timesteps)]


def refiner_part(scheduler: Any, denoising_end: float) -> Any:
    """The refiner stage's timesteps on a scheduler already ``set_timesteps``-ed (``StableDiffusionXLImg2Img
    Pipeline.get_timesteps`` with ``denoising_start``: a second-order sampler keeps an odd count), with its
    begin index set to match."""
    timesteps = scheduler.timesteps
    count = int((timesteps < timestep_cutoff(scheduler, denoising_end)).sum())
    if scheduler.order == 2 and count % 2 == 0:
        count += 1
    start = len(timesteps) - count
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return timesteps[start:]
