"""The ``loras`` field: names from the server's LoRA catalogue, each once, with scales within bounds (the
catalogue itself and its loading: :mod:`handler.model.lora_catalogue`)."""

from __future__ import annotations

from typing import Any

from handler.contract.checks import json_type, number, short
from handler.contract.errors import InvalidRequest


def lora_choices(value: Any, limits: Any) -> tuple[tuple[str, float], ...]:
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
