"""Input images for the img2img / inpainting tests, built in code: seeded pictures, masks and their base64."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def picture(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    """A seeded RGB picture: a gradient with noise on it (structure for the VAE, different per seed)."""
    rng = np.random.RandomState(seed)
    ramp = np.linspace(0, 127, width * height * 3).reshape(height, width, 3)
    return Image.fromarray((ramp + rng.randint(0, 128, (height, width, 3))).astype(np.uint8))


def half_mask(width: int = 64, height: int = 64) -> Image.Image:
    """Left half black (kept), right half white (repainted)."""
    mask = np.zeros((height, width), np.uint8)
    mask[:, width // 2 :] = 255
    return Image.fromarray(mask)


def encoded(image: Image.Image, format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def b64(image: Image.Image | bytes, format: str = "PNG", **options) -> str:
    data = image if isinstance(image, bytes) else encoded(image, format, **options)
    return base64.b64encode(data).decode()
