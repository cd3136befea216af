"""The stages of a request, named once: the keys of ``timings_ms`` in every reply and of the stage metric."""

from __future__ import annotations

from enum import Enum


class Stage(str, Enum):
    ENCODE_PROMPT = "encode_prompt"  # text encoders, micro-conditioning, noise
    VAE_ENCODE = "vae_encode"  # img2img / inpainting: the init and masked images into latents (when it ran)
    DENOISE = "denoise"  # from its first denoising step to its last
    VAE_DECODE = "vae_decode"
    ENCODE_IMAGE = "encode_image"  # PNG / JPEG / WebP
    TOTAL = "total"  # from its first handler call to its reply

    def __str__(self) -> str:
        return self.value
