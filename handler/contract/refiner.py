"""The refiner's request fields, checked torch-free (the hand-over itself: :mod:`handler.model.refiner`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from handler.contract.checks import number
from handler.contract.errors import InvalidRequest

REFINER_FIELDS = ("denoising_end", "aesthetic_score", "negative_aesthetic_score")


def refiner_options(payload: dict, get: Callable[[str], Any], refiner: bool, inpainting: bool) -> dict[str, Any]:
    """``denoising_end`` and the aesthetic scores, checked; {} when the request is not refined.

    A yaml default ``denoising_end`` refines text-to-image and img2img requests; inpainting is never refined
    (asking for it is a 400). The aesthetic scores without a hand-over are a 400, never ignored.
    """
    denoising_end = get("denoising_end")
    if inpainting and payload.get("denoising_end") is not None:
        raise InvalidRequest(
            "`denoising_end` (the refiner) does not apply to inpainting (`mask_image`)",
            field="denoising_end",
            value=payload["denoising_end"],
        )
    if denoising_end is None or inpainting:
        for name in REFINER_FIELDS[1:]:
            if payload.get(name) is not None:  # null is "not given" (a reply's echo, sent back, is valid)
                raise InvalidRequest(
                    f"`{name}` conditions the refiner: it needs `denoising_end`", field=name, value=payload[name]
                )
        return {}
    denoising_end = float(number("denoising_end", denoising_end, 0.0, 1.0))
    if not 0 < denoising_end < 1:
        raise InvalidRequest(
            f"`denoising_end` must be between 0 and 1 (exclusive) but is {denoising_end}",
            field="denoising_end",
            value=denoising_end,
        )
    if not refiner:
        raise InvalidRequest(
            "`denoising_end` hands over to a refiner, and this model has none (handler.refiner_path)",
            field="denoising_end",
            value=denoising_end,
        )
    scores = {name: float(number(name, get(name), 0.0, 10.0)) for name in REFINER_FIELDS[1:]}
    return {"denoising_end": denoising_end, **scores}
