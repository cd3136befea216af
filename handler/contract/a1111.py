"""AUTOMATIC1111's names for our values, and its "infotext": the recipe text A1111 writes into every image
(PNG ``parameters``, JPEG/WebP EXIF UserComment), which its PNG Info tab and civitai read back.

The infotext's layout is A1111's ``create_infotext`` (modules/processing.py): the prompt, a ``Negative prompt:``
line, then one line of ``Key: value`` pairs joined by ``", "``, a value quoted as JSON when it holds a comma, a
colon or a newline (``modules/infotext_utils.quote``). Keys A1111 knows get its names (Steps, Sampler, Schedule
type, CFG scale, Seed, Size, Model hash, Model, Denoising strength, Refiner switch at, ...); our other recipe
fields follow under their own names, so the text reproduces the image here too. Never written: the input images
(a recipe names no pixels), the caller's metadata, and how the reply is delivered (format, streaming).
"""

from __future__ import annotations

import json
from typing import Any

# A1111's sampler names (and, before 1.9, the schedule in the name) -> ours.
A1111_SAMPLERS = {
    "Euler": "euler", "Euler a": "euler_a", "Heun": "heun", "DPM2": "dpm2", "DPM2 a": "dpm2_a",
    "DPM++ 2M": "dpmpp_2m", "DPM++ 2M SDE": "dpmpp_2m_sde", "DDIM": "ddim", "UniPC": "unipc", "LCM": "lcm",
}  # fmt: skip
# A1111's `scheduler` values -> (its label in the infotext, our schedule).
A1111_SCHEDULES = {
    "automatic": ("Automatic", "default"), "karras": ("Karras", "karras"),
    "exponential": ("Exponential", "exponential"), "sgm_uniform": ("SGM Uniform", "trailing"),
}  # fmt: skip
# Our field -> A1111's infotext key, for the fields A1111 has.
A1111_KEYS = {
    "num_inference_steps": "Steps", "sampler": "Sampler", "schedule": "Schedule type", "guidance_scale": "CFG scale",
    "seed": "Seed", "strength": "Denoising strength", "eta": "Eta", "denoising_end": "Refiner switch at",
    "prompt_2": "Prompt 2", "negative_prompt_2": "Negative prompt 2",
}  # fmt: skip
NOT_RECIPE = (
    "prompt", "negative_prompt", "width", "height", "image", "mask_image", "loras", "num_images_per_prompt",
    "output_format", "response_format", "stream", "preview_every", "timeout_s", "embed_parameters",
)  # fmt: skip


def sampler_label(sampler: str | None) -> str:
    """A1111's name of our sampler (ours where A1111 has none; "model default" for None)."""
    return next((name for name, ours in A1111_SAMPLERS.items() if ours == sampler), sampler or "model default")


def schedule_label(schedule: str) -> str:
    return next((label for label, ours in A1111_SCHEDULES.values() if ours == schedule), schedule)


def quote(value: Any) -> str:
    """A1111's ``quote``: text with a comma, colon or newline as a JSON string, anything else as it is."""
    text = (
        value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, tuple, bool)) else str(value)
    )
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def infotext(parameters: dict[str, Any], seed: int, model: dict[str, str | None] | None = None) -> str:
    """The A1111 infotext of one image.

    Args:
        parameters (`dict`): the request's echoed parameters (``GenerationRequest.parameters()``).
        seed (`int`): this image's seed (image i of a request: ``seed + i``).
        model (`dict`, defaults to None): ``{"name", "hash"}`` of the serving model (the hash A1111's
            ``Model hash``: the first 10 hex digits of the UNet weights' sha256), None for neither.
    """
    pairs: dict[str, Any] = {}
    for name, value in parameters.items():
        if name in NOT_RECIPE or name == "prompt_weights" or value is None:
            continue
        if name == "sampler":
            value = sampler_label(value)
        elif name == "schedule":
            value = schedule_label(value)
        elif name == "seed":
            value = seed
        pairs[A1111_KEYS.get(name, name)] = value
    pairs["Size"] = f"{parameters['width']}x{parameters['height']}"
    for key, value in (model or {}).items():
        if value:
            pairs[f"Model {key}" if key == "hash" else "Model"] = value
    if parameters.get("loras"):
        pairs["LoRAs"] = ", ".join(f"{lora['name']}:{lora['scale']:g}" for lora in parameters["loras"])
    line = ", ".join(f"{key}: {quote(value)}" for key, value in pairs.items())
    return f"{parameters['prompt']}\nNegative prompt: {parameters['negative_prompt'] or ''}\n{line}"
