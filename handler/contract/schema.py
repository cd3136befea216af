"""The request schema: every field's name, type, default, bounds and documentation, in one place.

The handler validates with :func:`parse_request` (value checks in :mod:`handler.contract.checks`); the README's request
reference is generated from :data:`FIELDS` (``python -m handler.contract.schema``). Names follow diffusers'
``StableDiffusionXLPipeline.__call__``; the model yaml's ``handler:`` section overrides defaults and bounds.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, fields
from typing import Any

from handler.contract.checks import choice, integer, json_type, number, short, text
from handler.contract.errors import InvalidRequest
from handler.contract.images import RESIZE_MODES, InputImage, image_options, output_size, read_inputs
from handler.contract.prompts import PromptTokenizers
from handler.contract.refiner import refiner_options
from handler.contract.samplers import SAMPLER_NAMES, SCHEDULE_NAMES, check_sampling
from handler.contract.sizes import MAX_CONDITIONING_PIXELS, SDXL_BUCKETS, micro_conditioning

OUTPUT_FORMATS = ("png", "jpeg", "webp")
RESPONSE_FORMATS = ("json", "image")
IMAGE_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Limits:
    """Bounds every request is checked against (``handler.limits`` in the model yaml)."""

    max_prompt_chars: int = 2000
    min_size: int = 64
    max_size: int = 1536
    size_multiple: int = 8
    max_inference_steps: int = 100
    max_guidance_scale: float = 30.0
    max_images_per_prompt: int = 4
    max_timeout_s: float = 600.0
    samplers: tuple[str, ...] | None = None  # None: every sampler of handler.contract.samplers.SAMPLERS
    allowed_sizes: tuple[tuple[int, int], ...] | None = None  # (width, height); None: any size within bounds
    max_image_bytes: int = 10 * 2**20  # per input image, encoded (TorchServe's max_request_size must fit two)
    max_image_side: int = 4096  # per side of an input image, before any resize_mode
    max_loras_per_request: int = 3
    max_lora_scale: float = 2.0  # |scale| of one requested LoRA
    catalogue: tuple[tuple[str, float], ...] = ()  # (name, default scale): handler.lora_catalogue, set by settings
    refiner: bool = False  # a refiner is loaded (handler.refiner_path), set by settings
    model_scheduler: str = "EulerDiscreteScheduler"  # the model's own scheduler class (handler.model_scheduler)


@dataclass(frozen=True)
class Defaults:
    """Values used when a request leaves a field out (``handler.defaults`` in the model yaml)."""

    negative_prompt: str = ""
    num_inference_steps: int = 30
    guidance_scale: float = 5.0
    width: int = 1024
    height: int = 1024
    num_images_per_prompt: int = 1
    output_format: str = "png"
    timeout_s: float | None = None
    sampler: str | None = None  # None: the model's own scheduler
    schedule: str = "default"
    eta: float | None = None
    strength: float = 0.8
    resize_mode: str = "none"
    keep_unmasked: bool = True
    denoising_end: float | None = None  # None: the base alone; a fraction hands over to the refiner
    aesthetic_score: float = 6.0
    negative_aesthetic_score: float = 2.5


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request with every default filled in. ``seed`` is None until the server draws one."""

    prompt: str
    negative_prompt: str
    prompt_2: str | None
    negative_prompt_2: str | None
    num_inference_steps: int
    guidance_scale: float
    width: int
    height: int
    seed: int | None
    num_images_per_prompt: int
    output_format: str
    response_format: str = "json"
    stream: bool = False
    preview_every: int = 0
    timeout_s: float | None = None
    sampler: str | None = None
    schedule: str = "default"
    eta: float | None = None
    aspect_ratio: str | None = None
    original_size: tuple[int, int] | None = None  # (height, width), as in diffusers
    crops_coords_top_left: tuple[int, int] = (0, 0)
    target_size: tuple[int, int] | None = None
    negative_original_size: tuple[int, int] | None = None
    negative_crops_coords_top_left: tuple[int, int] = (0, 0)
    negative_target_size: tuple[int, int] | None = None
    image: InputImage | None = None  # img2img / inpainting: the init image, at width x height
    strength: float | None = None  # set exactly when `image` is
    mask_image: InputImage | None = None  # inpainting: white = repaint
    resize_mode: str | None = None  # set exactly when `image` is
    keep_unmasked: bool | None = None  # set exactly when `mask_image` is
    loras: tuple[tuple[str, float], ...] = ()  # (catalogue name, scale)
    denoising_end: float | None = None  # the refiner's hand-over point (handler.model.refiner)
    aesthetic_score: float | None = None  # set exactly when `denoising_end` is
    negative_aesthetic_score: float | None = None

    @property
    def denoising_steps(self) -> int:
        """Steps it runs: all of ``num_inference_steps``, or with an image the last ``int(steps x strength)``
        (diffusers' rule, so a timestep schedule is the same whatever the strength)."""
        if self.strength is None:
            return self.num_inference_steps
        return min(int(self.num_inference_steps * self.strength), self.num_inference_steps)

    def parameters(self) -> dict[str, Any]:
        """The effective parameters, as echoed in the response (a full reproducibility record; input images
        by their sha256 and size, never themselves)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["loras"] = [{"name": name, "scale": scale} for name, scale in self.loras]
        return {name: v.record() if isinstance(v, InputImage) else v for name, v in values.items()}


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


def parse_request(
    payload: Any,
    limits: Limits = Limits(),
    defaults: Defaults = Defaults(),
    tokenizers: PromptTokenizers | None = None,
) -> GenerationRequest:
    """Check a decoded JSON body up front and return the request with defaults filled in.

    Args:
        payload (`Any`): the decoded JSON body.
        limits (`Limits`, defaults to the built-in bounds): the model yaml's ``handler.limits`` (with the model's
            catalogue, refiner and scheduler class).
        defaults (`Defaults`, defaults to the built-in defaults): the model yaml's ``handler.defaults``.
        tokenizers (`PromptTokenizers`, defaults to None): the model's tokenizers; None skips token counts.

    Raises:
        InvalidRequest: naming the first wrong field and its value. Nothing is silently corrected.
    """
    # 1. Shape: one object, only known fields, the one required field present.
    if not isinstance(payload, dict):
        raise InvalidRequest(f"request body must be a JSON object but is {json_type(payload)}")
    unknown = sorted(set(payload) - set(FIELDS))
    if unknown:
        names = ", ".join(f"`{name}`" for name in unknown)
        raise InvalidRequest(
            f"unknown field(s) {names}; accepted fields: {', '.join(FIELDS)}", field=unknown[0], value=unknown[0]
        )
    if "prompt" not in payload:
        raise InvalidRequest("`prompt` is required", field="prompt")

    def get(name: str) -> Any:
        return payload.get(name, getattr(defaults, name, None))

    # 2. Texts.
    prompt = text("prompt", get("prompt"), limits.max_prompt_chars, optional=False)
    if not prompt.strip():
        raise InvalidRequest("`prompt` must not be empty or blank", field="prompt", value=prompt)
    negative_prompt = text("negative_prompt", get("negative_prompt"), limits.max_prompt_chars, optional=False)
    prompt_2 = text("prompt_2", get("prompt_2"), limits.max_prompt_chars, optional=True)
    negative_prompt_2 = text("negative_prompt_2", get("negative_prompt_2"), limits.max_prompt_chars, optional=True)

    # 3. Numbers.
    steps = integer("num_inference_steps", get("num_inference_steps"), 1, limits.max_inference_steps)
    guidance = number("guidance_scale", get("guidance_scale"), 0.0, limits.max_guidance_scale)
    image, mask_image = read_inputs(payload, limits)
    width, height, aspect_ratio = output_size(payload, get, image, limits)
    seed = None if get("seed") is None else integer("seed", get("seed"), 0, MAX_SEED)
    images = integer("num_images_per_prompt", get("num_images_per_prompt"), 1, limits.max_images_per_prompt)

    # 4. Choices.
    output_format = choice("output_format", get("output_format"), OUTPUT_FORMATS)
    response_format = choice("response_format", payload.get("response_format", "json"), RESPONSE_FORMATS)

    # 4b. Sampling: each name, then the pair and eta against the scheduler class.
    sampler = get("sampler")
    if sampler is not None:
        sampler = choice("sampler", sampler, limits.samplers or SAMPLER_NAMES)
    schedule = choice("schedule", get("schedule"), SCHEDULE_NAMES)
    eta = None if get("eta") is None else float(number("eta", get("eta"), 0.0, 1.0))
    check_sampling(sampler, schedule, eta, limits.model_scheduler)

    # 4c. SDXL micro-conditioning.
    conditioning = micro_conditioning(payload)

    # 4d. LoRAs from the catalogue.
    loras = lora_choices(payload.get("loras", []), limits)

    # 4e. img2img and inpainting.
    inputs = image_options(payload, get, image, mask_image, steps, width, height)

    # 4f. The refiner's hand-over.
    refined = refiner_options(payload, get, limits.refiner, inpainting=mask_image is not None)

    # 5. Streaming and time budget.
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest(
            f"`stream` must be true or false but is {json_type(stream)} {short(stream)}", field="stream", value=stream
        )
    preview_every = integer("preview_every", payload.get("preview_every", 0), 0, limits.max_inference_steps)
    timeout_s = get("timeout_s")
    if timeout_s is not None:
        timeout_s = float(number("timeout_s", timeout_s, 0.0, limits.max_timeout_s))
        if timeout_s <= 0:
            raise InvalidRequest(
                f"`timeout_s` must be greater than 0 but is {timeout_s}", field="timeout_s", value=timeout_s
            )

    # 6. Combinations.
    if preview_every and not stream:
        raise InvalidRequest("`preview_every` needs `stream: true`", field="preview_every", value=preview_every)
    if response_format == "image" and stream:
        raise InvalidRequest(
            "`stream` cannot be combined with an image response (`response_format: image` or "
            "an `Accept: image/*` header)",
            field="stream",
            value=stream,
        )
    if response_format == "image" and images != 1:
        raise InvalidRequest(
            f"an image response carries one image, but `num_images_per_prompt` is {images}",
            field="num_images_per_prompt",
            value=images,
        )
    request = GenerationRequest(
        prompt=prompt,
        negative_prompt=negative_prompt,
        prompt_2=prompt_2,
        negative_prompt_2=negative_prompt_2,
        num_inference_steps=steps,
        guidance_scale=float(guidance),
        width=width,
        height=height,
        seed=seed,
        num_images_per_prompt=images,
        output_format=output_format,
        response_format=response_format,
        stream=stream,
        preview_every=preview_every,
        timeout_s=timeout_s,
        sampler=sampler,
        schedule=schedule,
        eta=eta,
        aspect_ratio=aspect_ratio,
        **conditioning,
        **inputs,
        **refined,
        loras=loras,
    )

    # 7. The texts fit the model's text encoders.
    if tokenizers is not None:
        tokenizers.check(request)
    return request


def lora_choices(value: Any, limits: Limits) -> tuple[tuple[str, float], ...]:
    """``loras`` -> ((name, scale), ...): catalogue names only, each once, scales within bounds."""
    if not isinstance(value, list) or len(value) > limits.max_loras_per_request:
        raise InvalidRequest(
            f"`loras` must be a list of at most {limits.max_loras_per_request} {{name, scale}} objects but is "
            f"{json_type(value)} {short(value)}",
            field="loras",
            value=value,
        )
    available = dict(limits.catalogue)
    chosen: dict[str, float] = {}
    for item in value:
        if not isinstance(item, dict) or not set(item) <= {"name", "scale"} or "name" not in item:
            raise InvalidRequest(f"each of `loras` must be {{name, scale}} but one is {short(item)}", field="loras")
        name = item["name"]
        if name not in available:
            names = ", ".join(available) or "none (this server has no LoRA catalogue)"
            raise InvalidRequest(f"`loras` names {short(name)}, which is not in the catalogue; available: {names}",
                                 field="loras", value=name)  # fmt: skip
        if name in chosen:
            raise InvalidRequest(f"`loras` names {name!r} twice", field="loras", value=name)
        bound = limits.max_lora_scale
        chosen[name] = float(number("loras.scale", item.get("scale", available[name]), -bound, bound))
    return tuple(chosen.items())


def markdown_table(limits: Limits = Limits(), defaults: Defaults = Defaults()) -> str:
    """The request reference as a Markdown table (the README embeds the built-in one)."""
    rows = ["| field | type | default | bounds | meaning |", "|---|---|---|---|---|"]
    rows += [
        f"| `{f.name}` | {f.type} | {f.default} | {f.bounds} | {f.description} |"
        for f in describe_fields(limits, defaults)
    ]
    return "\n".join(rows)


def main(argv: list[str]) -> None:
    """Print the request reference; with a model yaml path, with that yaml's defaults and bounds."""
    if not argv:
        print(markdown_table())
        return
    import yaml

    from handler.contract.settings import HandlerSettings

    with open(argv[0]) as handle:
        settings = HandlerSettings.from_yaml(yaml.safe_load(handle))
    print(markdown_table(settings.limits, settings.defaults))


if __name__ == "__main__":
    main(sys.argv[1:])
