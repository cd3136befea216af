"""The VAE, in one place: latents in and out of the UNet's latent space (scaling factor, and latents_mean/std
where the VAE config has them), encode and decode in float32 where SDXL's VAE needs it (it overflows in
float16: its config says ``force_upcast``), exactly as diffusers' SDXL pipelines do."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def _latent_stats(vae: Any, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is None or std is None:
        return None
    return (
        torch.tensor(mean).view(1, -1, 1, 1).to(device, dtype),
        torch.tensor(std).view(1, -1, 1, 1).to(device, dtype),
    )


def into_unet_space(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """A VAE latent sample -> the UNet's latent space."""
    stats = _latent_stats(vae, latents.device, latents.dtype)
    if stats is None:
        return latents * vae.config.scaling_factor
    mean, std = stats
    return (latents - mean) * vae.config.scaling_factor / std


def out_of_unet_space(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """The UNet's latents -> what the VAE decoder takes."""
    stats = _latent_stats(vae, latents.device, latents.dtype)
    if stats is None:
        return latents / vae.config.scaling_factor
    mean, std = stats
    return latents * std / vae.config.scaling_factor + mean


@contextmanager
def in_float32(vae: Any, when: bool) -> Iterator[None]:
    """The VAE in float32 for the block (``when``), back in its own dtype after, whatever happens."""
    original = vae.dtype
    if when:
        vae.to(dtype=torch.float32)
    try:
        yield
    finally:
        if when:
            vae.to(dtype=original)


def encode_dtype(vae: Any) -> torch.dtype:
    """The dtype images go into the encoder in (float32 when the VAE's config asks)."""
    return torch.float32 if vae.config.force_upcast else vae.dtype


def encode(vae: Any, pixels: torch.Tensor) -> Any:
    """The latent distribution of ``pixels`` (already on the VAE's device)."""
    with in_float32(vae, vae.config.force_upcast and vae.dtype != torch.float32):
        return vae.encode(pixels.to(encode_dtype(vae))).latent_dist


def decode(vae: Any, latents: torch.Tensor, force_float32: bool = False) -> torch.Tensor:
    """Pixels in [-1, 1] of UNet-space ``latents``: in float32 when the config asks (as the pipeline does), or
    when ``force_float32`` (a first decode came out non-finite)."""
    original = vae.dtype
    upcast = original != torch.float32 and (force_float32 or (original == torch.float16 and vae.config.force_upcast))
    with in_float32(vae, upcast):
        latents = latents.to(next(iter(vae.post_quant_conv.parameters())).dtype)
        return vae.decode(out_of_unet_space(vae, latents), return_dict=False)[0]
