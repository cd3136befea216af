"""A FULL-SIZE SDXL base 1.0 pipeline with random weights, built from the published component configs.

For timing and memory on a GPU where real weights cannot be downloaded: speed does not depend on the
weights' values. Tokenizers are the small local ones of the tiny model (prompts are padded to 77 tokens
either way, so the text encoders do the same work).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

REFERENCE = Path(__file__).resolve().parent / "sdxl_reference"


def _config(component: str) -> dict:
    return json.loads((REFERENCE / component / "config.json").read_text())


def build_full_size_pipeline(device: str = "cuda", dtype: torch.dtype = torch.float16, seed: int = 0):
    """SDXL base 1.0's architecture (2.57 B-parameter UNet) with seeded random weights, built on ``device``.

    Args:
        device (`str`, defaults to "cuda"): where the weights are created ("meta" builds no storage).
        dtype (`torch.dtype`, defaults to float16): the weights' dtype.
        seed (`int`, defaults to 0): ``torch.manual_seed`` before building.
    """
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from handler.model.tiny_model import build_clip_tokenizer

    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(_config("unet"))
        vae = AutoencoderKL.from_config(_config("vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig(**_config("text_encoder")))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**_config("text_encoder_2")))
    scheduler_config = json.loads((REFERENCE / "scheduler" / "scheduler_config.json").read_text())
    pipeline = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=build_clip_tokenizer(),
        tokenizer_2=build_clip_tokenizer(),
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(scheduler_config),
    )
    if device != "meta":
        pipeline.to(dtype=dtype)
    return pipeline


def tflop_per_image(steps: int, width: int = 1024, height: int = 1024, guidance: bool = True) -> float:
    """Compute per image (2 x MACs of every conv and matmul) at SDXL base's published cost, scaled by pixels:
    one UNet forward at 1024x1024 is 6.76 TFLOP, the VAE decode 10.5, the text encoders 0.22."""
    scale = width * height / (1024 * 1024)
    return (6.76 * scale * steps * (2 if guidance else 1)) + 10.5 * scale + 0.22
