"""The request schema: every field's name, type, default, bounds and documentation, in one place.

The handler validates with :func:`parse_request`, the README's request reference is generated from
:data:`FIELDS` (``python -m handler.schema``), and the tests read both. Field names follow diffusers'
``StableDiffusionXLPipeline.__call__``. Defaults and bounds can be overridden in the ``handler:`` section
of the model yaml (see :mod:`handler.settings`); the values here are the built-in ones.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigError, InvalidRequest

OUTPUT_FORMATS = ("png", "jpeg", "webp")
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

    def parameters(self) -> dict[str, Any]:
        """The effective parameters, as echoed in the response (a full reproducibility record)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


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
    )


FIELDS = tuple(f.name for f in describe_fields())


def parse_request(payload: Any, limits: Limits = Limits(), defaults: Defaults = Defaults()) -> GenerationRequest:
    """Check a decoded JSON body up front and return the request with defaults filled in.

    Raises:
        InvalidRequest: naming the first wrong field and its value. Nothing is silently corrected.
    """
    # 1. Shape: one object, only known fields, the one required field present.
    if not isinstance(payload, dict):
        raise InvalidRequest(f"request body must be a JSON object but is {_json_type(payload)}")
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
    prompt = _text(payload, "prompt", get("prompt"), limits, optional=False)
    if not prompt.strip():
        raise InvalidRequest("`prompt` must not be empty or blank", field="prompt", value=prompt)
    negative_prompt = _text(payload, "negative_prompt", get("negative_prompt"), limits, optional=False)
    prompt_2 = _text(payload, "prompt_2", get("prompt_2"), limits, optional=True)
    negative_prompt_2 = _text(payload, "negative_prompt_2", get("negative_prompt_2"), limits, optional=True)

    # 3. Numbers.
    steps = _integer("num_inference_steps", get("num_inference_steps"), 1, limits.max_inference_steps)
    guidance = _number("guidance_scale", get("guidance_scale"), 0.0, limits.max_guidance_scale)
    width = _size("width", get("width"), limits)
    height = _size("height", get("height"), limits)
    seed = None if get("seed") is None else _integer("seed", get("seed"), 0, MAX_SEED)
    images = _integer("num_images_per_prompt", get("num_images_per_prompt"), 1, limits.max_images_per_prompt)

    # 4. Choices.
    output_format = get("output_format")
    if output_format not in OUTPUT_FORMATS:
        raise InvalidRequest(
            f"`output_format` must be one of {', '.join(OUTPUT_FORMATS)} but is {output_format!r}",
            field="output_format",
            value=output_format,
        )
    return GenerationRequest(
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
    )


def check_defaults(limits: Limits, defaults: Defaults) -> None:
    """Fail at startup when the configured defaults would not pass the configured bounds."""
    try:
        parse_request({"prompt": "check"}, limits, defaults)
    except InvalidRequest as exc:
        raise ConfigError(f"handler.defaults break handler.limits: {exc.message}") from None
    if limits.min_size > limits.max_size or limits.min_size < limits.size_multiple:
        raise ConfigError(f"handler.limits: need size_multiple <= min_size <= max_size, got {limits}")


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _text(payload: dict, name: str, value: Any, limits: Limits, optional: bool) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        kind = "a string or null" if optional else "a string"
        raise InvalidRequest(f"`{name}` must be {kind} but is {_json_type(value)}", field=name, value=value)
    if len(value) > limits.max_prompt_chars:
        raise InvalidRequest(
            f"`{name}` must be at most {limits.max_prompt_chars} characters but has {len(value)}",
            field=name,
            value=value,
        )
    return value


def _integer(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(
            f"`{name}` must be an integer but is {_json_type(value)} {_short(value)}", field=name, value=value
        )
    if not low <= value <= high:
        raise InvalidRequest(
            f"`{name}` must be between {low} and {high} but is {_short(value)}", field=name, value=value
        )
    return value


def _number(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(
            f"`{name}` must be a number but is {_json_type(value)} {_short(value)}", field=name, value=value
        )
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidRequest(
            f"`{name}` must be between {low} and {high} but is {_short(value)}", field=name, value=value
        )
    return value


def _size(name: str, value: Any, limits: Limits) -> int:
    value = _integer(name, value, limits.min_size, limits.max_size)
    if value % limits.size_multiple:
        raise InvalidRequest(
            f"`{name}` must be divisible by {limits.size_multiple} but is {value}", field=name, value=value
        )
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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

    from .settings import HandlerSettings

    with open(argv[0]) as handle:
        settings = HandlerSettings.from_yaml(yaml.safe_load(handle))
    print(markdown_table(settings.limits, settings.defaults))


if __name__ == "__main__":
    main(sys.argv[1:])
