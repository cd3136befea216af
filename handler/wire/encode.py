"""Encode images (PNG / JPEG / WebP), JSON response bodies and stream events."""

from __future__ import annotations

import base64
import io
import json
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from handler.contract.a1111 import infotext
from handler.contract.fields import IMAGE_CONTENT_TYPES
from handler.contract.settings import HandlerSettings
from handler.wire.events import PARKED, PREVIEW, PROGRESS, event_line

# A linear map from SDXL's 4 latent channels to RGB (the approximation previewers such as ComfyUI's use):
# a preview costs a 4x3 matmul on a 1/8-size latent instead of a VAE decode.
LATENT_RGB_FACTORS = torch.tensor(
    [[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362], [-0.3165, -0.2492, -0.2188]]
)
LATENT_RGB_BIAS = torch.tensor([0.1084, -0.0175, -0.0011])
EXIF_IFD, USER_COMMENT = 0x8769, 0x9286


def exif_user_comment(text: str) -> bytes:
    """An EXIF block holding ``text`` as its UserComment (tag 0x9286 in the Exif IFD, type UNDEFINED), in the
    UNICODE encoding A1111 writes (``piexif.helper.UserComment.dump(text, encoding="unicode")``: an 8-byte
    code, then UTF-16). Built by hand: Pillow's Exif writes a bytes value as BYTE, which readers truncate."""
    comment = b"UNICODE\0" + text.encode("utf-16-be")
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8)  # big-endian TIFF header, IFD0 at offset 8
    tiff += struct.pack(">HHHII", 1, EXIF_IFD, 4, 1, 26) + struct.pack(">I", 0)  # IFD0: a pointer to the Exif IFD
    tiff += struct.pack(">HHHII", 1, USER_COMMENT, 7, len(comment), 44) + struct.pack(">I", 0)  # Exif IFD
    return b"Exif\x00\x00" + tiff + comment


def encode_image(image: Any, output_format: str, settings: HandlerSettings, recipe: str | None = None) -> bytes:
    """``image`` in ``output_format``, with ``recipe`` (an A1111 infotext) inside where given: PNG text chunk
    ``parameters`` (tEXt, iTXt for non-Latin-1 text: Pillow picks), JPEG/WebP EXIF UserComment."""
    buffer = io.BytesIO()
    if output_format == "png":
        info = None
        if recipe is not None:
            info = PngInfo()
            info.add_text("parameters", recipe)
        image.save(buffer, format="PNG", compress_level=settings.png_compress_level, pnginfo=info)
    elif output_format in ("jpeg", "webp"):
        quality = settings.jpeg_quality if output_format == "jpeg" else settings.webp_quality
        extra = {} if recipe is None else {"exif": exif_user_comment(recipe)}
        image.save(buffer, format=output_format.upper(), quality=quality, **extra)
    else:
        raise ValueError(f"unsupported output format {output_format!r}")
    return buffer.getvalue()


def encode_many(
    images: dict[Any, tuple[Any, list[Any]]], settings: HandlerSettings, model: dict[str, Any] | None = None
) -> dict[Any, list[bytes] | Exception]:
    """Encode the images of several requests (key -> (request, PIL images)) at once, in the request's
    ``output_format``, each with its recipe unless the request says ``embed_parameters: false`` (``model``: the
    served model's name and hash, :func:`handler.model.identity.model_identity`). Pillow's encoders release
    the GIL, so threads run them in parallel (a 1024 px PNG takes ~0.1-0.3 s, comparable to a GPU step). A
    failure stays with its key."""
    jobs = []
    for key, (request, pictures) in images.items():
        parameters = request.parameters() if request.embed_parameters else None
        for index, image in enumerate(pictures):
            recipe = None if parameters is None else infotext(parameters, request.seed + index, model)
            jobs.append((key, request, image, recipe))

    def encode(job: tuple[Any, Any, Any, str | None]) -> bytes | Exception:
        _, request, image, recipe = job
        try:
            return encode_image(image, request.output_format, settings, recipe)
        except Exception as exc:  # reported as this request's error
            return exc

    if len(jobs) > 1 and settings.encode_threads > 1:
        with ThreadPoolExecutor(min(len(jobs), settings.encode_threads)) as pool:
            results = list(pool.map(encode, jobs))
    else:
        results = [encode(job) for job in jobs]
    encoded: dict[Any, list[bytes] | Exception] = {key: [] for key in images}
    for (key, *_), result in zip(jobs, results, strict=True):
        if isinstance(result, Exception):
            encoded[key] = result
        elif isinstance(encoded[key], list):
            encoded[key].append(result)
    return encoded


def json_body(encoded_images: list[bytes], output_format: str, document: dict[str, Any]) -> bytes:
    """The JSON response: base64 images first, then ``document`` (seeds, parameters, timings, batch)."""
    body = {
        "images": [base64.b64encode(data).decode("ascii") for data in encoded_images],
        "content_type": IMAGE_CONTENT_TYPES[output_format],
        **document,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def progress_event(report: Any) -> bytes:
    """``{"event": "progress", "step", "total_steps", "elapsed_s", "eta_s"}`` of a step report."""
    per_step = report.elapsed_s / max(report.step, 1)
    return event_line(
        PROGRESS,
        step=report.step,
        total_steps=report.total_steps,
        elapsed_s=round(report.elapsed_s, 3),
        eta_s=round(per_step * (report.total_steps - report.step), 3),
    )


def latent_preview(latents: torch.Tensor) -> Image.Image:
    """A low-resolution RGB picture of one image's latents (C, h, w), without the VAE."""
    factors = LATENT_RGB_FACTORS.to(latents.device, torch.float32)
    rgb = torch.einsum("chw,cr->hwr", latents.float(), factors) + LATENT_RGB_BIAS.to(latents.device)
    pixels = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(pixels)


def preview_event(report: Any) -> bytes:
    """``{"event": "preview", "step", "content_type", "images": [base64 JPEG per image]}``."""
    previews = []
    for latents in report.preview_latents:
        buffer = io.BytesIO()
        latent_preview(latents).save(buffer, format="JPEG", quality=70)
        previews.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return event_line(PREVIEW, step=report.step, content_type="image/jpeg", images=previews)


def stream_lines(reports: list[Any]) -> bytes:
    """The NDJSON lines of a request's step reports: each one's progress, and its preview where it has one; a
    parked report is one ``parked`` event."""
    lines = []
    for report in reports:
        if report.parked:
            lines.append(event_line(PARKED, step=report.step, total_steps=report.total_steps))
            continue
        lines.append(progress_event(report))
        if report.preview_latents is not None:
            lines.append(preview_event(report))
    return b"".join(lines)
