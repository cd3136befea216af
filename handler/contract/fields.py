"""The request reference: every field's name, type, default, bounds and documentation, with the effective
defaults and bounds of a model yaml. The parser accepts exactly :data:`FIELDS`; the docs' request table and the
job API's JSON Schema are rendered from it (:mod:`handler.contract.reference`)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from handler.contract.images import RESIZE_MODES
from handler.contract.request import MAX_SEED, OUTPUT_FORMATS, RESPONSE_FORMATS, Defaults, Limits
from handler.contract.samplers import SAMPLER_NAMES, SCHEDULE_NAMES
from handler.contract.sizes import MAX_CONDITIONING_PIXELS, SDXL_BUCKETS


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    description: str
    default: str
    bounds: str


def describe_fields(limits: Limits = Limits(), defaults: Defaults = Defaults()) -> tuple[Field, ...]:
    """The request reference: one entry per accepted field, with the effective default and bounds."""
    size_bounds = f"multiple of {limits.size_multiple}, {limits.min_size}..{limits.max_size}"
    return (
        Field("prompt", "string", "What to draw.", "required", f"non-empty, <= {limits.max_prompt_chars} chars"),
        Field(
            "negative_prompt",
            "string",
            "What to steer away from. Empty means none (SDXL then uses zero embeddings).",
            json.dumps(defaults.negative_prompt),
            f"<= {limits.max_prompt_chars} chars",
        ),
        Field(
            "prompt_2",
            "string or null",
            "Prompt for the second text encoder.",
            "same as `prompt`",
            f"<= {limits.max_prompt_chars} chars",
        ),
        Field(
            "negative_prompt_2",
            "string or null",
            "Negative prompt for the second text encoder.",
            "same as `negative_prompt`",
            f"<= {limits.max_prompt_chars} chars",
        ),
        Field(
            "num_inference_steps",
            "integer",
            "Denoising steps.",
            str(defaults.num_inference_steps),
            f"1..{limits.max_inference_steps}",
        ),
        Field(
            "guidance_scale",
            "number",
            "Classifier-free guidance; <= 1 turns guidance off.",
            str(defaults.guidance_scale),
            f"0..{limits.max_guidance_scale}",
        ),
        Field("width", "integer", "Image width in pixels.", str(defaults.width), size_bounds),
        Field("height", "integer", "Image height in pixels.", str(defaults.height), size_bounds),
        Field(
            "seed",
            "integer or null",
            "Seed of the first image; image i uses `seed + i`. Null: the server draws one.",
            "drawn by the server",
            f"0..{MAX_SEED}",
        ),
        Field(
            "num_images_per_prompt",
            "integer",
            "Images to make for this request.",
            str(defaults.num_images_per_prompt),
            f"1..{limits.max_images_per_prompt}",
        ),
        Field(
            "output_format",
            "string",
            "Encoding of the returned images.",
            json.dumps(defaults.output_format),
            " / ".join(OUTPUT_FORMATS),
        ),
        Field(
            "response_format",
            "string",
            "`image`: the body is the encoded image itself (one image; seed and parameters in headers). "
            "An `Accept: image/png`, `image/jpeg` or `image/webp` header does the same.",
            '"json"',
            " / ".join(RESPONSE_FORMATS),
        ),
        Field("stream", "boolean", "Stream progress events as JSON lines, then the result.", "false", ""),
        Field(
            "preview_every",
            "integer",
            "With `stream`: a low-resolution preview every N steps; 0 is off.",
            "0",
            f"0..{limits.max_inference_steps}",
        ),
        Field(
            "timeout_s",
            "number or null",
            "Time budget for this request in the handler; past it, 504.",
            "none" if defaults.timeout_s is None else str(defaults.timeout_s),
            f"> 0, <= {limits.max_timeout_s}",
        ),
        Field(
            "sampler",
            "string or null",
            "The sampler (its own scheduler per request; requests with different samplers still share each "
            "UNet forward). Null: the model's own scheduler. heun, dpm2 and dpm2_a take 2 UNet forwards per step.",
            "the model's" if defaults.sampler is None else json.dumps(defaults.sampler),
            " / ".join(limits.samplers or SAMPLER_NAMES),
        ),
        Field(
            "schedule",
            "string",
            "Spacing of the timesteps or sigmas: `karras` and `exponential` sigmas, `trailing` (starts at t=999, "
            "for few-step distilled models), `leading`, `linspace`; `default` keeps the model's. Not every sampler "
            "takes every schedule: an impossible pair is a 400 naming both.",
            json.dumps(defaults.schedule),
            " / ".join(SCHEDULE_NAMES),
        ),
        Field(
            "eta",
            "number or null",
            "Noise added by the samplers that take it (ddim, tcd); 0 is deterministic. Null: the sampler's own "
            "default (DDIM 0, TCD 0.3). A sampler without it answers 400.",
            "null" if defaults.eta is None else str(defaults.eta),
            "0..1",
        ),
        Field(
            "aspect_ratio",
            "string or null",
            "One of SDXL's ~1 MP training sizes instead of `width`/`height`: "
            + ", ".join(f"{ratio} = {w}x{h}" for ratio, (w, h) in SDXL_BUCKETS.items())
            + ". A `width` or `height` sent beside it must match.",
            "null",
            " / ".join(SDXL_BUCKETS),
        ),
        *(
            Field(name, kind, meaning, default, bounds)
            for name, kind, meaning, default, bounds in (
                (
                    "original_size",
                    "[height, width] or null",
                    "SDXL micro-conditioning: the size the image claims to come from (diffusers' order).",
                    "[height, width]",
                    f"1..{MAX_CONDITIONING_PIXELS}",
                ),
                (
                    "crops_coords_top_left",
                    "[top, left]",
                    "SDXL micro-conditioning: the crop corner it claims; [0, 0] looks centred.",
                    "[0, 0]",
                    f"0..{MAX_CONDITIONING_PIXELS}",
                ),
                (
                    "target_size",
                    "[height, width] or null",
                    "SDXL micro-conditioning: the target size.",
                    "[height, width]",
                    f"1..{MAX_CONDITIONING_PIXELS}",
                ),
                (
                    "negative_original_size",
                    "[height, width] or null",
                    "Negative micro-conditioning (with `negative_target_size`; both or neither).",
                    "the positive ones",
                    f"1..{MAX_CONDITIONING_PIXELS}",
                ),
                (
                    "negative_crops_coords_top_left",
                    "[top, left]",
                    "Negative crop corner (with the negative sizes).",
                    "[0, 0]",
                    f"0..{MAX_CONDITIONING_PIXELS}",
                ),
                (
                    "negative_target_size",
                    "[height, width] or null",
                    "Negative target size (with `negative_original_size`).",
                    "the positive ones",
                    f"1..{MAX_CONDITIONING_PIXELS}",
                ),
            )
        ),
        *image_fields(limits, defaults),
        Field(
            "loras",
            "list of {name, scale}",
            "LoRAs from the server's catalogue (`handler.lora_catalogue`), each with its scale (default: the "
            "catalogue's). Requests with different LoRAs still share every UNet forward. Available: "
            + (", ".join(f"`{name}`" for name, _ in limits.catalogue) or "none (no catalogue in this yaml)")
            + ".",
            "[]",
            f"<= {limits.max_loras_per_request}, |scale| <= {limits.max_lora_scale}, names unique",
        ),
        *refiner_fields(limits, defaults),
    )


def image_fields(limits: Limits, defaults: Defaults) -> tuple[Field, ...]:
    """img2img and inpainting (:mod:`handler.contract.images` checks the images)."""
    sides = f"{limits.min_size}..{limits.max_image_side}"
    image_bounds = f"PNG / JPEG / WebP, <= {limits.max_image_bytes} bytes, sides {sides}"
    return (
        Field(
            "image",
            "string or null",
            "img2img: the init image, base64 or a `data:image/...;base64,` URL. EXIF orientation is applied and "
            "any mode converted to RGB. `width`/`height` left out take the image's size; a different size needs "
            "`resize_mode`. Echoed as its sha256 and size, never itself.",
            "null",
            image_bounds,
        ),
        Field(
            "strength",
            "number",
            "With `image`: how much to change it. The last `int(num_inference_steps x strength)` steps run "
            "(at least 1), from the image noised to that step; 1 starts from noise (inpainting) or all but.",
            str(defaults.strength),
            "0..1",
        ),
        Field(
            "mask_image",
            "string or null",
            "Inpainting, with `image`: white repaints, black keeps (grayscale, binarized at 50%); same size as "
            "`image`.",
            "null",
            image_bounds,
        ),
        Field(
            "resize_mode",
            "string",
            "With `image`: `none` refuses an image whose size differs from `width` x `height`; `resize` "
            "stretches it, `crop` keeps its aspect ratio and centre-crops, `fill` keeps it and fills the border "
            "(diffusers' resize modes). The mask follows the image.",
            json.dumps(defaults.resize_mode),
            " / ".join(RESIZE_MODES),
        ),
        Field(
            "keep_unmasked",
            "boolean",
            "With `mask_image`: pixels outside the mask are the input's own, pasted back after decoding (the VAE "
            "round trip shifts them slightly); false returns the raw decode, as diffusers does.",
            json.dumps(defaults.keep_unmasked),
            "",
        ),
    )


def refiner_fields(limits: Limits, defaults: Defaults) -> tuple[Field, ...]:
    """The SDXL refiner's hand-over (:mod:`handler.model.refiner`)."""
    available = "" if limits.refiner else " This model has no refiner (`handler.refiner_path`)."
    return (
        Field(
            "denoising_end",
            "number or null",
            "Hand over to the refiner at this fraction of the schedule (diffusers' `denoising_end` / "
            "`high_noise_frac`, 0.8 in its docs): the base runs the timesteps above the cut, the refiner the "
            "rest on the same latents. Text-to-image and img2img; never inpainting. null: the base alone." + available,
            json.dumps(defaults.denoising_end),
            "0..1, exclusive; each model gets at least one step",
        ),
        Field(
            "aesthetic_score",
            "number",
            "With `denoising_end`: the refiner's aesthetic-score conditioning (diffusers' default).",
            str(defaults.aesthetic_score),
            "0..10",
        ),
        Field(
            "negative_aesthetic_score",
            "number",
            "With `denoising_end`: the aesthetic score of the refiner's negative (unconditional) rows.",
            str(defaults.negative_aesthetic_score),
            "0..10",
        ),
    )


FIELDS = tuple(f.name for f in describe_fields())
