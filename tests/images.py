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


def _png_with_size(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` (CRC fixed): a decompression bomb's header."""
    import struct
    import zlib

    data = bytearray(encoded(picture(8, 8)))
    ihdr = 8  # signature, then the IHDR chunk: length(4) type(4) data(13) crc(4)
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", zlib.crc32(bytes(data[ihdr + 4 : ihdr + 21])))
    return bytes(data)


def malformed_image_bodies(size: int = 64) -> list[tuple[str, dict, str]]:
    """(what, body, the field its 400 must name): bad ``image`` / ``mask_image`` inputs, every family the
    image checks refuse, each in an otherwise valid request of ``size`` x ``size``."""
    good = picture(size, size)
    png = encoded(good)
    jpeg = encoded(good, "JPEG", quality=90)
    frames = [picture(size, size, seed) for seed in (1, 2)]
    animated = io.BytesIO()
    frames[0].save(animated, "PNG", save_all=True, append_images=frames[1:])
    deep = io.BytesIO()
    Image.fromarray(np.full((size, size), 40000, np.uint16)).save(deep, "PNG")  # 16-bit grayscale
    corrupt = bytearray(png)
    corrupt[len(corrupt) // 2 : len(corrupt) // 2 + 64] = bytes(64)
    image = {"prompt": "a cat", "seed": 1}
    cases = [
        ("a number", {"image": 42}, "image"),
        ("a list", {"image": [1, 2, 3]}, "image"),
        ("an object", {"image": {"url": "http://x"}}, "image"),
        ("empty", {"image": ""}, "image"),
        ("not base64", {"image": "this is not base64!!"}, "image"),
        ("base64 of no image", {"image": b64(bytes(range(256)) * 4)}, "image"),
        ("GIF", {"image": b64(good, "GIF")}, "image"),
        ("BMP", {"image": b64(good, "BMP")}, "image"),
        ("TIFF", {"image": b64(good, "TIFF")}, "image"),
        ("SVG", {"image": b64(b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>')}, "image"),
        ("truncated PNG", {"image": b64(png[: len(png) // 2])}, "image"),
        ("truncated JPEG", {"image": b64(jpeg[: len(jpeg) // 2])}, "image"),
        ("corrupt PNG data", {"image": b64(bytes(corrupt))}, "image"),
        ("PNG signature only", {"image": b64(png[:8])}, "image"),
        ("1x1", {"image": b64(picture(1, 1))}, "image"),
        ("bomb header 30000x30000", {"image": b64(_png_with_size(30000, 30000))}, "image"),
        ("huge side 64x5000", {"image": b64(_png_with_size(64, 5000))}, "image"),
        ("animated PNG", {"image": b64(animated.getvalue())}, "image"),
        ("16-bit PNG", {"image": b64(deep.getvalue())}, "image"),
        ("data URL of GIF type", {"image": "data:image/gif;base64," + b64(good, "GIF")}, "image"),
        ("data URL says PNG, is JPEG", {"image": "data:image/png;base64," + b64(jpeg)}, "image"),
        ("data URL without base64", {"image": "data:image/png," + b64(png)}, "image"),
        ("size differs from width", {"image": b64(png), "width": size * 2}, "image"),
        ("size not a multiple of 8", {"image": b64(picture(size + 4, size))}, "image"),
        ("mask of another size", {"image": b64(png), "mask_image": b64(half_mask(size, size + 8))}, "mask_image"),
        ("mask without image", {"mask_image": b64(half_mask(size, size))}, "mask_image"),
        ("mask is GIF", {"image": b64(png), "mask_image": b64(half_mask(size, size), "GIF")}, "mask_image"),
        ("strength without image", {"strength": 0.5}, "strength"),
        ("strength above 1", {"image": b64(png), "strength": 1.5}, "strength"),
        ("strength as text", {"image": b64(png), "strength": "0.5"}, "strength"),
        ("strength x steps < 1", {"image": b64(png), "strength": 0.1, "num_inference_steps": 4}, "strength"),
        ("unknown resize_mode", {"image": b64(png), "resize_mode": "squash"}, "resize_mode"),
        ("keep_unmasked without mask", {"image": b64(png), "keep_unmasked": False}, "keep_unmasked"),
    ]
    return [(what, {**image, **body}, field) for what, body, field in cases]


def max_pixel_difference(png_a: bytes, png_b: bytes) -> int:
    """The largest per-channel difference of two encoded images of one size (batched vs alone: <= 1)."""
    import io

    import numpy as np

    a, b = (np.asarray(Image.open(io.BytesIO(data)), dtype=np.int16) for data in (png_a, png_b))
    assert a.shape == b.shape
    return int(np.abs(a - b).max())
