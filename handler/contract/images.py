"""Input images (``image``, ``mask_image``): untrusted bytes in, a checked PIL image and its record out.

Every check happens before the pixels are decoded, where it can: the base64 text's length, the container's
magic bytes (PNG, JPEG and WebP only), the declared size (each side and the pixel count, which stops
decompression bombs before Pillow allocates them), one frame only. Then the pixels are loaded (a truncated or
corrupt file fails here), the EXIF orientation is applied and the mode converted (images to RGB, masks to L).
Any failure is an :class:`~handler.contract.errors.InvalidRequest` naming the field. The request keeps an
:class:`InputImage`, whose :meth:`~InputImage.record` (sha256, size, format) is all that is ever echoed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import warnings
from dataclasses import dataclass, field
from typing import Any

from handler.contract.checks import json_type
from handler.contract.errors import InvalidRequest
from handler.contract.sizes import resolve_size

FORMATS = ("PNG", "JPEG", "WEBP")
MEDIA_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/webp": "WEBP"}
RESIZE_MODES = ("none", "resize", "crop", "fill")
# 8-bit modes Pillow converts to RGB / L faithfully; 16-bit and float images are refused, not clipped.
ACCEPTED_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr")
# What a refused container is, for the error message (checked on the first bytes only; never opened).
OTHER_FORMATS = (
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"<?xml", "SVG/XML"),
    (b"<svg", "SVG"),
)


@dataclass(frozen=True)
class InputImage:
    """A checked input image: its pixels (RGB, or L for a mask) at the request's size, and what it was."""

    pixels: Any = field(compare=False, repr=False)  # PIL.Image.Image
    sha256: str
    format: str  # PNG / JPEG / WEBP
    bytes: int  # size of the encoded file
    width: int  # as sent (after EXIF orientation), before any resize_mode
    height: int

    def record(self) -> dict[str, Any]:
        """What the reproducibility record says about it: never the image itself."""
        return {
            "sha256": self.sha256,
            "format": self.format.lower(),
            "bytes": self.bytes,
            "width": self.width,
            "height": self.height,
        }


def read_image(name: str, value: Any, limits: Any, mask: bool = False) -> InputImage:
    """Decode and check one input image field (base64, or a ``data:image/...;base64,`` URL).

    Args:
        name (`str`): the field, for error messages.
        value: the field's JSON value.
        limits: the request limits (``max_image_bytes``, ``min_size``, ``max_image_side``).
        mask (`bool`, defaults to False): convert to L (a mask) instead of RGB.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    # 1. Text -> bytes, bounded before decoding.
    data, declared = _base64_bytes(name, value, limits.max_image_bytes)
    sha256 = hashlib.sha256(data).hexdigest()

    # 2. The container, from its magic bytes: only the allowed formats are ever parsed.
    kind = _sniff(data)
    if kind not in FORMATS:
        raise InvalidRequest(
            f"`{name}` must be a PNG, JPEG or WebP image but is {kind or 'not an image file'}", field=name, value=kind
        )
    if declared is not None and MEDIA_TYPES[declared] != kind:
        raise InvalidRequest(f"`{name}` is declared as {declared} but is {kind}", field=name, value=declared)

    # 3. Header only: size and frames, before any pixel is decoded (Pillow decodes lazily).
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[kind])
            width, height = image.size
            _check_side(name, width, height, limits)
            if getattr(image, "n_frames", 1) > 1:
                frames = image.n_frames
                raise InvalidRequest(f"`{name}` is animated ({frames} frames); send one still image", field=name)
            if image.mode not in ACCEPTED_MODES:
                raise InvalidRequest(
                    f"`{name}` has pixel mode {image.mode}; send an 8-bit image (RGB, RGBA, L, P or CMYK)",
                    field=name,
                    value=image.mode,
                )
            # 4. The pixels: a truncated or corrupt file fails here.
            image.load()
            # 5. Orientation and mode.
            image = ImageOps.exif_transpose(image)
            width, height = image.size
            image = image.convert("L" if mask else "RGB")
    except InvalidRequest:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidRequest(f"`{name}` is too large to decode: {exc}", field=name) from None
    except UnidentifiedImageError:
        raise InvalidRequest(
            f"`{name}` is not a readable {kind} image: Pillow cannot identify it", field=name
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidRequest(f"`{name}` is not a readable {kind} image: {exc}", field=name) from None
    return InputImage(image, sha256, kind, len(data), width, height)


def output_size(payload: dict[str, Any], values: dict[str, Any], limits: Any) -> dict[str, Any]:
    """``width``, ``height`` and ``aspect_ratio``: with an image, a side the request leaves out is the image's."""
    image = values["image"]
    if image is None or "aspect_ratio" in payload:
        width, height, aspect_ratio = resolve_size(payload, values["width"], values["height"], limits)
        return {"width": width, "height": height, "aspect_ratio": aspect_ratio}
    width, height = payload.get("width", image.width), payload.get("height", image.height)
    try:
        width, height, aspect_ratio = resolve_size(payload, width, height, limits)
    except InvalidRequest as exc:
        if "width" in payload and "height" in payload:
            raise
        raise InvalidRequest(
            f"`image` is {image.width}x{image.height}, which cannot be the output size: {exc.message}. "
            "Send `width` and `height` with a `resize_mode`",
            field="image",
            value=f"{image.width}x{image.height}",
        ) from None
    return {"width": width, "height": height, "aspect_ratio": aspect_ratio}


def fit_inputs(values: dict[str, Any]) -> dict[str, Any]:
    """img2img and inpainting: at least one denoising step, and the image and mask (of the image's size) at the
    output size by ``resize_mode``. {} for a text-to-image request."""
    image, mask = values["image"], values["mask_image"]
    if image is None:
        return {}
    steps, strength = values["num_inference_steps"], values["strength"]
    if int(steps * strength) < 1:
        raise InvalidRequest(
            f"`strength` {strength} x `num_inference_steps` {steps} leaves no denoising step "
            f"(int({steps} x {strength}) = 0); raise either",
            field="strength",
            value=strength,
        )
    if mask is not None and (mask.width, mask.height) != (image.width, image.height):
        raise InvalidRequest(
            f"`mask_image` is {mask.width}x{mask.height} but `image` is {image.width}x{image.height}; "
            "they must be the same size",
            field="mask_image",
            value=f"{mask.width}x{mask.height}",
        )
    size = (values["width"], values["height"], values["resize_mode"])
    fitted = {"image": fit_image("image", image, *size)}
    if mask is not None:
        fitted["mask_image"] = fit_image("mask_image", mask, *size)
    return fitted


def fit_image(name: str, image: InputImage, width: int, height: int, resize_mode: str) -> InputImage:
    """The image at the request's ``width`` x ``height``: as it is when it already has that size; else resized
    as ``resize_mode`` says (diffusers' ``VaeImageProcessor.resize``: ``resize`` stretches, ``crop`` keeps the
    aspect ratio and centre-crops, ``fill`` keeps it and fills the border from the image), or refused."""
    if (image.width, image.height) == (width, height):
        return image
    if resize_mode == "none":
        raise InvalidRequest(
            f"`{name}` is {image.width}x{image.height} but the request is {width}x{height}; send an image of that "
            "size, leave `width`/`height` out to use the image's, or set `resize_mode` (resize, crop or fill)",
            field=name,
            value=f"{image.width}x{image.height}",
        )
    mode = {"resize": "default", "crop": "crop", "fill": "fill"}[resize_mode]
    resized = _resizer().resize(image.pixels, height=height, width=width, resize_mode=mode)
    return InputImage(resized, image.sha256, image.format, image.bytes, image.width, image.height)


def _resizer():
    from diffusers.image_processor import VaeImageProcessor

    return VaeImageProcessor(do_resize=True, do_normalize=False)


def _base64_bytes(name: str, value: Any, max_bytes: int) -> tuple[bytes, str | None]:
    if not isinstance(value, str):
        raise InvalidRequest(
            f"`{name}` must be a base64 string or a data URL but is {json_type(value)}", field=name, value=value
        )
    declared = None
    if value.startswith("data:"):
        header, comma, value = value.partition(",")
        media_type = header[5:].split(";")[0].strip().lower()
        if not comma or not header.endswith(";base64"):
            raise InvalidRequest(f"`{name}` is a data URL without `;base64,`", field=name, value=header)
        if media_type not in MEDIA_TYPES:
            raise InvalidRequest(
                f"`{name}` is a data URL of {media_type or 'no media type'}; send image/png, image/jpeg or image/webp",
                field=name,
                value=media_type,
            )
        declared = media_type
    # Line breaks (MIME base64) are allowed; anything else outside the alphabet is an error.
    max_chars = (max_bytes + 2) // 3 * 4
    if len(value) > max_chars * 1.1 + 64:  # before joining: bounds the work on a huge string
        raise InvalidRequest(
            f"`{name}` is {len(value)} characters of base64, over the limit of {max_bytes} bytes of image "
            f"(max_image_bytes)",
            field=name,
        )
    text = "".join(value.split())
    if not text:
        raise InvalidRequest(f"`{name}` is empty", field=name, value="")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"`{name}` is not valid base64: {exc}", field=name) from None
    if len(data) > max_bytes:
        raise InvalidRequest(
            f"`{name}` is {len(data)} bytes, over the limit of {max_bytes} (max_image_bytes)", field=name
        )
    return data, declared


def _sniff(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((kind for magic, kind in OTHER_FORMATS if data.startswith(magic)), None)


def _check_side(name: str, width: int, height: int, limits: Any) -> None:
    low, high = limits.min_size, limits.max_image_side
    if not (low <= width <= high and low <= height <= high):
        raise InvalidRequest(
            f"`{name}` is {width}x{height} px; each side must be between {low} and {high} (max_image_side)",
            field=name,
            value=f"{width}x{height}",
        )
