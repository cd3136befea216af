"""The request type: a validated request with every default filled in, and the defaults and bounds it is
checked against (the model yaml's ``handler.defaults`` and ``handler.limits``). Names follow diffusers'
``StableDiffusionXLPipeline.__call__``."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any

from handler.contract.field import REQUIRED
from handler.contract.fields import FIELDS
from handler.contract.images import InputImage
from handler.contract.prompt_syntax import understood


@dataclass(frozen=True)
class Limits:
    """Bounds every request is checked against (``handler.limits`` in the model yaml)."""

    max_prompt_chars: int = 2000
    max_prompt_chunks: int = 3  # a text's tokens in chunks of 75 (handler.model.text_encoding): 3 = 225 tokens
    min_size: int = 64
    max_size: int = 1536
    size_multiple: int = 8
    max_inference_steps: int = 100
    max_guidance_scale: float = 30.0
    max_images_per_prompt: int = 4
    max_timeout_s: float = 600.0
    max_priority: int = 9  # `priority` is 0 (default) .. this
    samplers: tuple[str, ...] | None = None  # None: every sampler of handler.contract.samplers.SAMPLERS
    allowed_sizes: tuple[tuple[int, int], ...] | None = None  # (width, height); None: any size within bounds
    max_image_bytes: int = 10 * 2**20  # per input image, encoded (TorchServe's max_request_size must fit two)
    max_image_side: int = 4096  # per side of an input image, before any resize_mode
    max_loras_per_request: int = 3
    max_lora_scale: float = 2.0  # |scale| of one requested LoRA
    catalogue: tuple[tuple[str, float], ...] = ()  # (name, default scale): handler.lora_catalogue, set by settings
    refiner: bool = False  # a refiner is loaded (handler.refiner_path), set by settings
    model_scheduler: str = "EulerDiscreteScheduler"  # the model's own scheduler class (handler.model_scheduler)


class RequestRecord:
    """What every request has besides its fields (the fields: :data:`handler.contract.fields.FIELDS`)."""

    @property
    def denoising_steps(self) -> int:
        """Steps it runs: all of ``num_inference_steps``, or with an image the last ``int(steps x strength)``
        (diffusers' rule, so a timestep schedule is the same whatever the strength)."""
        if self.strength is None:
            return self.num_inference_steps
        return min(int(self.num_inference_steps * self.strength), self.num_inference_steps)

    def parameters(self) -> dict[str, Any]:
        """The effective parameters, as echoed in the response (a full reproducibility record; input images
        by their sha256 and size, never themselves)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["loras"] = [{"name": name, "scale": scale} for name, scale in self.loras]
        if self.prompt_syntax != "plain":  # what the syntax understood, so a user sees each weight
            values["prompt_weights"] = understood(self)
        return {name: v.record() if isinstance(v, InputImage) else v for name, v in values.items()}


def _generated(name: str, doc: str, members: list, **options: Any) -> type:
    """A frozen dataclass of this module, generated from the field table."""
    generated = make_dataclass(name, members, frozen=True, namespace={"__doc__": doc}, **options)
    generated.__module__ = __name__  # pickles and reprs as handler.contract.request.<name>
    return generated


# The yaml's ``handler.defaults``: every configurable field, with the table's default.
Defaults = _generated(
    "Defaults",
    "Values used when a request leaves a field out (``handler.defaults`` in the model yaml).",
    [(f.name, f.annotation, field(default=f.default)) for f in FIELDS if f.configurable],
)

# A parsed request: every field, typed as its kind returns it. A field that needs another one is None
# exactly when that one is; the optional ones are None when not given.
GenerationRequest = _generated(
    "GenerationRequest",
    "A validated request with every default filled in. ``seed`` is None until the server draws one.",
    [
        (f.name, f.annotation, field() if f.default is REQUIRED else field(default=None if f.needs else f.default))
        for f in FIELDS
    ],
    bases=(RequestRecord,),
    kw_only=True,
)
