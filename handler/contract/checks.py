"""Value checks for request fields: each returns the value unchanged or raises InvalidRequest naming the field,
the expected kind or range, and what it got. Nothing is coerced (``20.0`` is not an integer, ``true`` not 1)."""

from __future__ import annotations

import math
from typing import Any

from handler.contract.errors import InvalidRequest


def json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def text(name: str, value: Any, max_chars: int, optional: bool) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        kind = "a string or null" if optional else "a string"
        raise InvalidRequest(f"`{name}` must be {kind} but is {json_type(value)}", field=name, value=value)
    if len(value) > max_chars:
        raise InvalidRequest(
            f"`{name}` must be at most {max_chars} characters but has {len(value)}",
            field=name,
            value=value,
        )
    return value


def integer(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(
            f"`{name}` must be an integer but is {json_type(value)} {short(value)}", field=name, value=value
        )
    if not low <= value <= high:
        raise InvalidRequest(
            f"`{name}` must be between {low} and {high} but is {short(value)}", field=name, value=value
        )
    return value


def number(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(
            f"`{name}` must be a number but is {json_type(value)} {short(value)}", field=name, value=value
        )
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidRequest(
            f"`{name}` must be between {low} and {high} but is {short(value)}", field=name, value=value
        )
    return value


def choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InvalidRequest(
            f"`{name}` must be one of {', '.join(allowed)} but is {short(value)}", field=name, value=value
        )
    return value


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
