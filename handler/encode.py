"""Encode PIL images as PNG / JPEG / WebP bytes, and successful generations as JSON response bodies."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

from .settings import HandlerSettings

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def encode_image(image: Any, output_format: str, settings: HandlerSettings) -> bytes:
    buffer = io.BytesIO()
    if output_format == "png":
        image.save(buffer, format="PNG", compress_level=settings.png_compress_level)
    elif output_format == "jpeg":
        image.save(buffer, format="JPEG", quality=settings.jpeg_quality)
    elif output_format == "webp":
        image.save(buffer, format="WEBP", quality=settings.webp_quality)
    else:
        raise ValueError(f"unsupported output format {output_format!r}")
    return buffer.getvalue()


def json_body(encoded_images: list[bytes], output_format: str, document: dict[str, Any]) -> bytes:
    """The JSON response: base64 images first, then ``document`` (seeds, parameters, timings, batch)."""
    body = {
        "images": [base64.b64encode(data).decode("ascii") for data in encoded_images],
        "content_type": CONTENT_TYPES[output_format],
        **document,
    }
    return json.dumps(body, separators=(",", ":")).encode()
