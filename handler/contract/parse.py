"""Parse a request: check a decoded JSON body up front, in one place, and return the request with its defaults
filled in, or raise InvalidRequest naming the first wrong field and its value. Every front door (TorchServe,
Triton, the job gateway) runs this, model-aware checks included, before any work."""

from __future__ import annotations

from typing import Any

from handler.contract.checks import choice, integer, json_type, number, short, text
from handler.contract.errors import InvalidRequest
from handler.contract.fields import FIELDS
from handler.contract.images import image_options, output_size, read_inputs
from handler.contract.prompts import PromptTokenizers
from handler.contract.refiner import refiner_options
from handler.contract.request import MAX_SEED, OUTPUT_FORMATS, RESPONSE_FORMATS, Defaults, GenerationRequest, Limits
from handler.contract.samplers import SAMPLER_NAMES, SCHEDULE_NAMES, check_sampling
from handler.contract.sizes import micro_conditioning


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
