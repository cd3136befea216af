"""Parse a request: check a decoded JSON body up front, in one place, and return the request with its defaults
filled in, or raise InvalidRequest naming the first wrong field and its value. Every front door (TorchServe,
Triton, the job gateway) runs this, model-aware checks included, before any work.

Each field's own value is checked by its kind in the field table (:data:`handler.contract.fields.FIELDS`); the
rules across fields are the numbered steps below.
"""

from __future__ import annotations

from typing import Any

from handler.contract.checks import json_type
from handler.contract.errors import InvalidRequest
from handler.contract.field import Field
from handler.contract.fields import FIELD_NAMES, FIELDS
from handler.contract.images import fit_inputs, output_size
from handler.contract.prompt_syntax import TEXT_FIELDS, weighted_pieces
from handler.contract.prompts import PromptTokenizers
from handler.contract.request import Defaults, GenerationRequest, Limits
from handler.contract.samplers import check_sampling
from handler.contract.sizes import check_negative_sizes
from handler.contract.steps import StepPlans


def parse_request(
    payload: Any,
    limits: Limits = Limits(),
    defaults: Defaults = Defaults(),
    tokenizers: PromptTokenizers | None = None,
    step_plans: StepPlans | None = None,
) -> GenerationRequest:
    """Check a decoded JSON body up front and return the request with defaults filled in.

    Args:
        payload (`Any`): the decoded JSON body.
        limits (`Limits`, defaults to the built-in bounds): the model yaml's ``handler.limits`` (with the model's
            catalogue, refiner and scheduler class).
        defaults (`Defaults`, defaults to the built-in defaults): the model yaml's ``handler.defaults``.
        tokenizers (`PromptTokenizers`, defaults to None): the model's tokenizers; None skips token counts.
        step_plans (`StepPlans`, defaults to None): the model's timesteps; None skips the refiner's step split.

    Raises:
        InvalidRequest: naming the first wrong field and its value. Nothing is silently corrected.
    """
    # 1. Shape: one object, only known fields, the one required field present.
    if not isinstance(payload, dict):
        raise InvalidRequest(f"request body must be a JSON object but is {json_type(payload)}")
    unknown = sorted(set(payload) - set(FIELD_NAMES))
    if unknown:
        names = ", ".join(f"`{name}`" for name in unknown)
        raise InvalidRequest(
            f"unknown field(s) {names}; accepted fields: {', '.join(FIELD_NAMES)}", field=unknown[0], value=unknown[0]
        )
    if "prompt" not in payload:
        raise InvalidRequest("`prompt` is required", field="prompt")

    # 2. Each field's own value (the request's, else the default), by its kind, in table order.
    values = {f.name: field_value(f, payload, limits, defaults) for f in FIELDS}

    # 3. The output size: `aspect_ratio`'s bucket, `width` x `height`, or the image's own.
    values.update(output_size(payload, values, limits))

    # 4. The negative micro-conditioning sizes go together.
    check_negative_sizes(values)

    # 5. The refiner: never for inpainting, only with a refiner loaded.
    refiner_hand_over(payload, values, limits)

    # 6. Options that apply only with another field: None without it, sent without it a 400.
    for f in FIELDS:
        if f.needs is not None:
            values[f.name] = needed_value(f, payload, values, limits)

    # 7. img2img and inpainting: at least one denoising step, the images fitted to the output size.
    values.update(fit_inputs(values))

    # 8. The sampler x schedule pair, `eta` and the steps, against the sampler's scheduler class.
    check_sampling(
        values["sampler"], values["schedule"], values["eta"], limits.model_scheduler, values["num_inference_steps"]
    )

    # 9. Output combinations.
    check_output(values)

    # 10. Every text reads in its syntax (a malformed one: a 400 naming the field and the position).
    for name in TEXT_FIELDS:
        if values[name]:
            weighted_pieces(values[name], values["prompt_syntax"], field=name)
    request = GenerationRequest(**values)

    # 11. Model facts: the texts fit the text encoders; each stage of a refined request gets a step.
    if tokenizers is not None:
        tokenizers.check(request, limits.max_prompt_chunks, request.prompt_syntax)
    if step_plans is not None and request.denoising_end is not None:
        step_plans.check_refiner_split(request)
    return request


def field_value(f: Field, payload: dict[str, Any], limits: Limits, defaults: Defaults) -> Any:
    """The field's value, checked by its kind: the request's own, else the yaml's (or the table's) default."""
    default = getattr(defaults, f.name) if f.configurable else f.default
    value = payload.get(f.name, default)
    if value is None and f.nullable:
        return None
    return f.kind.check(f.name, value, limits)


def needed_value(f: Field, payload: dict[str, Any], values: dict[str, Any], limits: Limits) -> Any:
    if values[f.needs] is None:
        if payload.get(f.name) is not None:  # null: the echo of a request without it
            raise InvalidRequest(f"`{f.name}` applies only with `{f.needs}`", field=f.name, value=payload[f.name])
        return None
    if values[f.name] is None and not f.kind.nullable:  # sent as null where it applies
        return f.kind.check(f.name, None, limits)
    return values[f.name]


def refiner_hand_over(payload: dict[str, Any], values: dict[str, Any], limits: Limits) -> None:
    """A yaml default `denoising_end` refines text-to-image and img2img; asking for it with a mask is a 400."""
    if values["mask_image"] is not None and values["image"] is not None:
        if payload.get("denoising_end") is not None:
            raise InvalidRequest(
                "`denoising_end` (the refiner) does not apply to inpainting (`mask_image`)",
                field="denoising_end",
                value=payload["denoising_end"],
            )
        values["denoising_end"] = None
    if values["denoising_end"] is not None and not limits.refiner:
        raise InvalidRequest(
            "`denoising_end` hands over to a refiner, and this model has none (handler.refiner_path)",
            field="denoising_end",
            value=values["denoising_end"],
        )


def check_output(values: dict[str, Any]) -> None:
    if values["preview_every"] and not values["stream"]:
        raise InvalidRequest(
            "`preview_every` needs `stream: true`", field="preview_every", value=values["preview_every"]
        )
    if values["response_format"] == "image" and values["stream"]:
        raise InvalidRequest(
            "`stream` cannot be combined with an image response (`response_format: image` or "
            "an `Accept: image/*` header)",
            field="stream",
            value=True,
        )
    if values["response_format"] == "image" and values["num_images_per_prompt"] != 1:
        raise InvalidRequest(
            f"an image response carries one image, but `num_images_per_prompt` is {values['num_images_per_prompt']}",
            field="num_images_per_prompt",
            value=values["num_images_per_prompt"],
        )
