"""The field table: every request field ONCE, with its kind (type and bounds), default, documentation and group.

Generated from it: the parser's per-field checks (:func:`handler.contract.parse.parse_request`), the request
type and the yaml's ``handler.defaults`` type (:mod:`handler.contract.request`), the docs' request table and the
JSON Schema (:mod:`handler.contract.reference`), and the client's ``--help`` (:mod:`sdxl_client.cli`). A new
field is one entry here; a rule across fields is one numbered step in ``parse_request``.
"""

from __future__ import annotations

from typing import Any

from handler.contract.field import REQUIRED, Field, FieldDoc
from handler.contract.images import RESIZE_MODES
from handler.contract.kinds import Choice, Flag, Image, Integer, Loras, Number, Pair, Text
from handler.contract.prompt_syntax import PROMPT_SYNTAXES
from handler.contract.samplers import SAMPLER_NAMES, SCHEDULE_NAMES
from handler.contract.sizes import MAX_CONDITIONING_PIXELS, SDXL_BUCKETS

OUTPUT_FORMATS = ("png", "jpeg", "webp")
RESPONSE_FORMATS = ("json", "image")
IMAGE_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
MAX_SEED = 2**32 - 1

SIDE = Integer("min_size", "max_size", multiple_of="size_multiple")
SIZE = Pair("height, width", 1, MAX_CONDITIONING_PIXELS, nullable=True)
CORNER = Pair("top, left", 0, MAX_CONDITIONING_PIXELS)


def lora_description(limits: Any) -> str:
    names = ", ".join(f"`{name}`" for name, _ in limits.catalogue) or "none (no catalogue in this yaml)"
    return (
        "LoRAs from the server's catalogue (`handler.lora_catalogue`), each with its scale (default: the "
        f"catalogue's). Requests with different LoRAs still share every UNet forward. Available: {names}."
    )


def refiner_description(limits: Any) -> str:
    available = "" if limits.refiner else " This model has no refiner (`handler.refiner_path`)."
    return (
        "Hand over to the refiner at this fraction of the schedule (diffusers' `denoising_end` / "
        "`high_noise_frac`, 0.8 in its docs): the base runs the timesteps above the cut, the refiner the rest on "
        "the same latents. Text-to-image and img2img; never inpainting; each model gets at least one step. null: "
        "the base alone." + available
    )


FIELDS: tuple[Field, ...] = (
    # What to draw.
    Field("prompt", Text(nonblank=True), "What to draw.", group="prompt", default=REQUIRED),
    Field(
        "negative_prompt",
        Text(),
        "What to steer away from. Empty means none (SDXL then uses zero embeddings).",
        group="prompt",
        default="",
        configurable=True,
    ),
    Field(
        "prompt_2",
        Text(nullable=True),
        "Prompt for the second text encoder.",
        group="prompt",
        when_null="same as `prompt`",
    ),
    Field(
        "negative_prompt_2",
        Text(nullable=True),
        "Negative prompt for the second text encoder.",
        group="prompt",
        when_null="same as `negative_prompt`",
    ),
    Field(
        "prompt_syntax",
        Choice(PROMPT_SYNTAXES),
        "How the texts are read: `plain`, every character is text; `a1111`, A1111's weighting: `(word)` x1.1, "
        "`[word]` /1.1, `(word:1.3)`, nesting multiplies, `\\(` is a literal parenthesis, `BREAK` starts a new "
        "chunk of 75 tokens; `compel`, the compel library's (`word+`, `word-`, `(words)1.3`, `.blend()`, "
        "`.and()`; the `compel` extra). Weights 0..3; malformed syntax is a 400 naming the position; the reply's "
        "`parameters.prompt_weights` shows what was understood.",
        group="prompt",
        default="plain",
        configurable=True,
    ),
    # How to sample.
    Field(
        "num_inference_steps",
        Integer(1, "max_inference_steps"),
        "Denoising steps.",
        group="sampling",
        default=30,
        configurable=True,
    ),
    Field(
        "guidance_scale",
        Number(0.0, "max_guidance_scale"),
        "Classifier-free guidance; <= 1 turns guidance off.",
        group="sampling",
        default=5.0,
        configurable=True,
    ),
    Field("width", SIDE, "Image width in pixels.", group="size", default=1024, configurable=True),
    Field("height", SIDE, "Image height in pixels.", group="size", default=1024, configurable=True),
    Field(
        "seed",
        Integer(0, MAX_SEED, nullable=True),
        "Seed of the first image; image i uses `seed + i`. Null: the server draws one.",
        group="sampling",
        when_null="drawn by the server",
    ),
    Field(
        "num_images_per_prompt",
        Integer(1, "max_images_per_prompt"),
        "Images to make for this request.",
        group="output",
        default=1,
        configurable=True,
    ),
    Field(
        "output_format",
        Choice(OUTPUT_FORMATS),
        "Encoding of the returned images.",
        group="output",
        default="png",
        configurable=True,
    ),
    Field(
        "embed_parameters",
        Flag(),
        "Write the image's recipe into the file, as A1111 does (its PNG Info and civitai read it): PNG `parameters` "
        "text, JPEG/WebP EXIF UserComment; prompts, sampler, seed, size, model name and hash, LoRAs. Never the "
        "input images or the caller's metadata.",
        group="output",
        default=True,
        configurable=True,
    ),
    Field(
        "response_format",
        Choice(RESPONSE_FORMATS),
        "`image`: the body is the encoded image itself (one image; seed and parameters in headers). An "
        "`Accept: image/png`, `image/jpeg` or `image/webp` header does the same.",
        group="output",
        default="json",
    ),
    Field(
        "stream",
        Flag(),
        "Stream progress events as JSON lines, then the result.",
        group="output",
        default=False,
    ),
    Field(
        "preview_every",
        Integer(0, "max_inference_steps"),
        "With `stream`: a low-resolution preview every N steps; 0 is off.",
        group="output",
        default=0,
    ),
    Field(
        "timeout_s",
        Number(0, "max_timeout_s", nullable=True, open_low=True),
        "Time budget for this request in the handler; past it, 504.",
        group="output",
        configurable=True,
        when_null="none",
    ),
    Field(
        "priority",
        Integer(0, "max_priority"),
        "Importance, 0 (lowest) and up: when the step budget (`handler.max_rows_per_step`) cannot take every "
        "request in flight, the `priority` and `slack` step policies step higher ones first; a waiting request "
        "gains one level per `handler.priority_aging_s`, so none starves.",
        group="scheduling",
        default=0,
        configurable=True,
    ),
    Field(
        "deadline_s",
        Number(0, "max_timeout_s", nullable=True, open_low=True),
        "The image's target, seconds from arrival (a job's: from its dispatch): `edf` and `slack` step the nearest "
        "first; "
        "a request whose estimated finish (its steps at the measured step time) misses it is refused at once "
        "with 503 and `Retry-After`. Unlike `timeout_s`, never stops a running request.",
        group="scheduling",
        configurable=True,
        when_null="none",
    ),
    Field(
        "sampler",
        Choice(lambda limits: limits.samplers or SAMPLER_NAMES, nullable=True),
        "The sampler (its own scheduler per request; requests with different samplers still share each UNet "
        "forward). Null: the model's own scheduler. heun, dpm2 and dpm2_a take 2 UNet forwards per step.",
        group="sampling",
        configurable=True,
        when_null="the model's",
    ),
    Field(
        "schedule",
        Choice(SCHEDULE_NAMES),
        "Spacing of the timesteps or sigmas: `karras` and `exponential` sigmas, `trailing` (starts at t=999, for "
        "few-step distilled models), `leading`, `linspace`; `default` keeps the model's. Not every sampler takes "
        "every schedule: an impossible pair is a 400 naming both.",
        group="sampling",
        default="default",
        configurable=True,
    ),
    Field(
        "eta",
        Number(0.0, 1.0, nullable=True),
        "Noise added by the samplers that take it (ddim, tcd); 0 is deterministic. Null: the sampler's own "
        "default (DDIM 0, TCD 0.3). A sampler without it answers 400.",
        group="sampling",
        configurable=True,
    ),
    Field(
        "aspect_ratio",
        Choice(tuple(SDXL_BUCKETS), nullable=True),
        "One of SDXL's ~1 MP training sizes instead of `width`/`height`: "
        + ", ".join(f"{ratio} = {w}x{h}" for ratio, (w, h) in SDXL_BUCKETS.items())
        + ". A `width` or `height` sent beside it must match.",
        group="size",
    ),
    # SDXL micro-conditioning.
    Field(
        "original_size",
        SIZE,
        "SDXL micro-conditioning: the size the image claims to come from (diffusers' order).",
        group="size",
        when_null="[height, width]",
    ),
    Field(
        "crops_coords_top_left",
        CORNER,
        "SDXL micro-conditioning: the crop corner it claims; [0, 0] looks centred.",
        group="size",
        default=(0, 0),
    ),
    Field(
        "target_size",
        SIZE,
        "SDXL micro-conditioning: the target size.",
        group="size",
        when_null="[height, width]",
    ),
    Field(
        "negative_original_size",
        SIZE,
        "Negative micro-conditioning (with `negative_target_size`; both or neither).",
        group="size",
        when_null="the positive ones",
    ),
    Field(
        "negative_crops_coords_top_left",
        CORNER,
        "Negative crop corner (with the negative sizes).",
        group="size",
        default=(0, 0),
    ),
    Field(
        "negative_target_size",
        SIZE,
        "Negative target size (with `negative_original_size`).",
        group="size",
        when_null="the positive ones",
    ),
    # img2img and inpainting (handler.contract.images).
    Field(
        "image",
        Image(),
        "img2img: the init image, base64 or a `data:image/...;base64,` URL. EXIF orientation is applied and any "
        "mode converted to RGB. `width`/`height` left out take the image's size; a different size needs "
        "`resize_mode`. Echoed as its sha256 and size, never itself.",
        group="image",
    ),
    Field(
        "strength",
        Number(0.0, 1.0),
        "how much to change it. The last `int(num_inference_steps x strength)` steps run (at least 1), "
        "from the image noised to that step; 1 starts from noise (inpainting) or all but.",
        group="image",
        default=0.8,
        configurable=True,
        needs="image",
    ),
    Field(
        "mask_image",
        Image(mask=True),
        "the inpainting mask: white repaints, black keeps (grayscale, binarized at 50%); the size of `image`.",
        group="image",
        needs="image",
    ),
    Field(
        "resize_mode",
        Choice(RESIZE_MODES),
        "`none` refuses an image whose size differs from `width` x `height`; `resize` stretches it, `crop` keeps "
        "its aspect ratio and centre-crops, `fill` keeps it and fills the border (diffusers' resize modes). The "
        "mask follows the image.",
        group="image",
        default="none",
        configurable=True,
        needs="image",
    ),
    Field(
        "keep_unmasked",
        Flag(),
        "pixels outside the mask are the input's own, pasted back after decoding (the VAE round trip shifts "
        "them slightly); false returns the raw decode, as diffusers does.",
        group="image",
        default=True,
        configurable=True,
        needs="mask_image",
    ),
    # Add-ons.
    Field("loras", Loras(), lora_description, group="loras", default=()),
    Field(
        "denoising_end",
        Number(0.0, 1.0, nullable=True, open_low=True, open_high=True),
        refiner_description,
        group="refiner",
        configurable=True,
        when_null="the base alone",
    ),
    Field(
        "aesthetic_score",
        Number(0.0, 10.0),
        "the refiner's aesthetic-score conditioning (diffusers' default).",
        group="refiner",
        default=6.0,
        configurable=True,
        needs="denoising_end",
    ),
    Field(
        "negative_aesthetic_score",
        Number(0.0, 10.0),
        "the aesthetic score of the refiner's negative (unconditional) rows.",
        group="refiner",
        default=2.5,
        configurable=True,
        needs="denoising_end",
    ),
)
FIELDS_BY_NAME = {f.name: f for f in FIELDS}
FIELD_NAMES = tuple(FIELDS_BY_NAME)


def describe_fields(limits: Any = None, defaults: Any = None) -> tuple[FieldDoc, ...]:
    """The request reference: one entry per field, with the effective default and bounds (built-in when None)."""
    from handler.contract.request import Defaults, Limits

    limits, defaults = limits or Limits(), defaults or Defaults()
    return tuple(
        FieldDoc(f.name, f.type_doc(), f.describe(limits), f.default_doc(defaults), f.kind.bounds(limits), f.needs)
        for f in FIELDS
    )
