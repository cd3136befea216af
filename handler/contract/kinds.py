"""Value kinds of the field table: what one field's JSON value may be. Each kind checks a value (returning it,
typed, or raising InvalidRequest naming the field), says its type and bounds for the docs, gives its JSON Schema,
and its Python type on the request. Bounds may name a ``Limits`` attribute, so one table serves every model yaml.

Cross-field rules (an option that needs another field, sizes from an image, the sampler x schedule pair) are not
kinds: :mod:`handler.contract.parse` runs them after every field's own value is checked.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from handler.contract.checks import choice, integer, json_type, short, text
from handler.contract.errors import InvalidRequest

Bound = int | float | str  # a number, or the name of a Limits attribute


def bound(value: Bound, limits: Any) -> Any:
    return getattr(limits, value) if isinstance(value, str) else value


@dataclass(frozen=True)
class Text:
    nullable: bool = False
    nonblank: bool = False  # `prompt`: some text besides whitespace

    type_doc = "string"
    annotation = "str"

    def check(self, name: str, value: Any, limits: Any) -> Any:
        value = text(name, value, limits.max_prompt_chars, optional=self.nullable)
        if self.nonblank and not value.strip():
            raise InvalidRequest(f"`{name}` must not be empty or blank", field=name, value=value)
        return value

    def bounds(self, limits: Any) -> str:
        return ("non-empty, " if self.nonblank else "") + f"<= {limits.max_prompt_chars} chars"

    def schema(self, limits: Any) -> dict:
        return {"type": "string", "maxLength": limits.max_prompt_chars, **({"minLength": 1} if self.nonblank else {})}


@dataclass(frozen=True)
class Integer:
    low: Bound
    high: Bound
    nullable: bool = False
    multiple_of: str | None = None  # a Limits attribute: the value must divide by it (image sides)

    type_doc = "integer"
    annotation = "int"

    def check(self, name: str, value: Any, limits: Any) -> Any:
        value = integer(name, value, bound(self.low, limits), bound(self.high, limits))
        step = bound(self.multiple_of, limits) if self.multiple_of else 1
        if value % step:
            raise InvalidRequest(f"`{name}` must be divisible by {step} but is {value}", field=name, value=value)
        return value

    def bounds(self, limits: Any) -> str:
        span = f"{bound(self.low, limits)}..{bound(self.high, limits)}"
        return f"multiple of {bound(self.multiple_of, limits)}, {span}" if self.multiple_of else span

    def schema(self, limits: Any) -> dict:
        schema = {"type": "integer", "minimum": bound(self.low, limits), "maximum": bound(self.high, limits)}
        return {**schema, "multipleOf": bound(self.multiple_of, limits)} if self.multiple_of else schema


@dataclass(frozen=True)
class Number:
    low: Bound
    high: Bound
    nullable: bool = False
    open_low: bool = False  # the low bound itself is refused
    open_high: bool = False

    type_doc = "number"
    annotation = "float"

    def check(self, name: str, value: Any, limits: Any) -> Any:
        low, high = bound(self.low, limits), bound(self.high, limits)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidRequest(
                f"`{name}` must be a number but is {json_type(value)} {short(value)}", field=name, value=value
            )
        inside = math.isfinite(value) and low <= value <= high
        if not inside or (self.open_low and value == low) or (self.open_high and value == high):
            raise InvalidRequest(f"`{name}` must be {self._span(low, high)} but is {short(value)}", field=name,
                                 value=value)  # fmt: skip
        return float(value)

    def _span(self, low: Any, high: Any) -> str:
        if self.open_low and self.open_high:
            return f"between {low} and {high} (exclusive)"
        if self.open_low:
            return f"greater than {low} and at most {high}"
        return f"between {low} and {high}"

    def bounds(self, limits: Any) -> str:
        low, high = bound(self.low, limits), bound(self.high, limits)
        if not (self.open_low or self.open_high):
            return f"{low}..{high}"
        return f"{'>' if self.open_low else '>='} {low}, {'<' if self.open_high else '<='} {high}"

    def schema(self, limits: Any) -> dict:
        low, high = bound(self.low, limits), bound(self.high, limits)
        return {
            "type": "number",
            ("exclusiveMinimum" if self.open_low else "minimum"): low,
            ("exclusiveMaximum" if self.open_high else "maximum"): high,
        }


@dataclass(frozen=True)
class Choice:
    options: tuple[str, ...] | Callable[[Any], tuple[str, ...]]  # or the options a model's limits allow
    nullable: bool = False

    type_doc = "string"
    annotation = "str"

    def allowed(self, limits: Any) -> tuple[str, ...]:
        return self.options(limits) if callable(self.options) else self.options

    def check(self, name: str, value: Any, limits: Any) -> Any:
        return choice(name, value, self.allowed(limits))

    def bounds(self, limits: Any) -> str:
        return " / ".join(self.allowed(limits))

    def schema(self, limits: Any) -> dict:
        return {"type": "string", "enum": list(self.allowed(limits))}


@dataclass(frozen=True)
class Flag:
    nullable = False
    type_doc = "boolean"
    annotation = "bool"

    def check(self, name: str, value: Any, limits: Any) -> Any:
        if not isinstance(value, bool):
            raise InvalidRequest(
                f"`{name}` must be true or false but is {json_type(value)} {short(value)}", field=name, value=value
            )
        return value

    def bounds(self, limits: Any) -> str:
        return ""

    def schema(self, limits: Any) -> dict:
        return {"type": "boolean"}


@dataclass(frozen=True)
class Pair:
    """``[a, b]`` of integers (SDXL's micro-conditioning sizes and crop corners)."""

    names: str  # "height, width" or "top, left"
    low: int
    high: int
    nullable: bool = False

    annotation = "tuple[int, int]"

    @property
    def type_doc(self) -> str:
        return f"[{self.names}]"

    def check(self, name: str, value: Any, limits: Any) -> Any:
        from handler.contract.sizes import size_pair

        return size_pair(name, list(value) if isinstance(value, tuple) else value, self.low, self.high)

    def bounds(self, limits: Any) -> str:
        return f"{self.low}..{self.high}"

    def schema(self, limits: Any) -> dict:
        item = {"type": "integer", "minimum": self.low, "maximum": self.high}
        return {"type": "array", "items": item, "minItems": 2, "maxItems": 2}


@dataclass(frozen=True)
class Image:
    """An untrusted input image (:func:`handler.contract.images.read_image`)."""

    mask: bool = False
    nullable = True
    type_doc = "string"
    annotation = "InputImage"

    def check(self, name: str, value: Any, limits: Any) -> Any:
        from handler.contract.images import read_image

        return read_image(name, value, limits, mask=self.mask)

    def bounds(self, limits: Any) -> str:
        sides = f"{limits.min_size}..{limits.max_image_side}"
        return f"PNG / JPEG / WebP, <= {limits.max_image_bytes} bytes, sides {sides}"

    def schema(self, limits: Any) -> dict:
        return {"type": "string", "contentEncoding": "base64"}


@dataclass(frozen=True)
class Loras:
    """``[{name, scale}]`` naming the server's LoRA catalogue."""

    nullable = False
    type_doc = "list of {name, scale}"
    annotation = "tuple[tuple[str, float], ...]"

    def check(self, name: str, value: Any, limits: Any) -> Any:
        from handler.contract.loras import lora_choices

        return lora_choices(list(value) if isinstance(value, tuple) else value, limits)

    def bounds(self, limits: Any) -> str:
        return f"<= {limits.max_loras_per_request}, |scale| <= {limits.max_lora_scale}, names unique"

    def schema(self, limits: Any) -> dict:
        names = [name for name, _ in limits.catalogue]
        scale = {"type": "number", "minimum": -limits.max_lora_scale, "maximum": limits.max_lora_scale}
        item = {
            "type": "object",
            "properties": {"name": {"type": "string", "enum": names}, "scale": scale},
            "required": ["name"],
            "additionalProperties": False,
        }
        return {"type": "array", "items": item, "maxItems": limits.max_loras_per_request}


Kind = Text | Integer | Number | Choice | Flag | Pair | Image | Loras
