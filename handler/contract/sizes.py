"""Image sizes: SDXL's aspect-ratio buckets (listed once, here) and the checks of size-pair fields."""

from __future__ import annotations

from typing import Any

from handler.contract.checks import integer, json_type, short
from handler.contract.errors import InvalidRequest

# (width, height): the ~1 megapixel sizes SDXL was trained on, by aspect ratio (width:height, rounded).
SDXL_BUCKETS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "9:7": (1152, 896),
    "7:9": (896, 1152),
    "19:13": (1216, 832),
    "13:19": (832, 1216),
    "7:4": (1344, 768),
    "4:7": (768, 1344),
    "12:5": (1536, 640),
    "5:12": (640, 1536),
}
MAX_CONDITIONING_PIXELS = 8192  # bound of the micro-conditioning sizes and crop corners


def size_pair(name: str, value: Any, low: int, high: int = MAX_CONDITIONING_PIXELS) -> tuple[int, int] | None:
    """``[a, b]`` of integers in ``low..high`` (None stays None)."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2:
        raise InvalidRequest(
            f"`{name}` must be a list of two integers but is {json_type(value)} {short(value)}", field=name, value=value
        )
    return tuple(integer(name, item, low, high) for item in value)  # type: ignore[return-value]


def bucket(aspect_ratio: Any, payload: dict[str, Any]) -> tuple[int, int]:
    """The bucket's (width, height); a ``width`` or ``height`` sent beside it must be the bucket's own."""
    if aspect_ratio not in SDXL_BUCKETS:
        raise InvalidRequest(
            f"`aspect_ratio` must be one of {', '.join(SDXL_BUCKETS)} but is {short(aspect_ratio)}",
            field="aspect_ratio",
            value=aspect_ratio,
        )
    resolved = SDXL_BUCKETS[aspect_ratio]
    for name, size in zip(("width", "height"), resolved, strict=True):
        if name in payload and payload[name] != size:
            raise InvalidRequest(
                f"`{name}` {short(payload[name])} contradicts `aspect_ratio` {aspect_ratio} "
                f"({resolved[0]}x{resolved[1]}); send one or the other",
                field=name,
                value=payload[name],
            )
    return resolved


def resolve_size(payload: dict[str, Any], width: Any, height: Any, limits: Any) -> tuple[int, int, str | None]:
    """(width, height, aspect_ratio) of a request: its bucket, or its own width and height, within the model's
    bounds and, when the yaml lists them, among ``limits.allowed_sizes``."""
    aspect_ratio = payload.get("aspect_ratio")
    if aspect_ratio is not None:
        width, height = bucket(aspect_ratio, payload)
        if not (limits.min_size <= min(width, height) and max(width, height) <= limits.max_size):
            raise InvalidRequest(
                f"`aspect_ratio` {aspect_ratio} is {width}x{height}, outside this model's sizes "
                f"{limits.min_size}..{limits.max_size}",
                field="aspect_ratio",
                value=aspect_ratio,
            )
    else:
        width, height = image_side("width", width, limits), image_side("height", height, limits)
    if limits.allowed_sizes is not None and (width, height) not in limits.allowed_sizes:
        allowed = ", ".join(f"{w}x{h}" for w, h in limits.allowed_sizes)
        raise InvalidRequest(
            f"`width` x `height` {width}x{height} is not one of this server's sizes: {allowed}",
            field="width",
            value=width,
        )
    return width, height, aspect_ratio


def image_side(name: str, value: Any, limits: Any) -> int:
    value = integer(name, value, limits.min_size, limits.max_size)
    if value % limits.size_multiple:
        raise InvalidRequest(
            f"`{name}` must be divisible by {limits.size_multiple} but is {value}", field=name, value=value
        )
    return value


def check_negative_sizes(values: dict[str, Any]) -> None:
    """The negative micro-conditioning sizes go together: both or neither (None: the positive ones)."""
    if (values["negative_original_size"] is None) != (values["negative_target_size"] is None):
        given = "negative_original_size" if values["negative_target_size"] is None else "negative_target_size"
        raise InvalidRequest(
            "`negative_original_size` and `negative_target_size` go together: send both or neither",
            field=given,
            value=list(values[given]),
        )
