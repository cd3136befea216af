"""The request type: a validated request with every default filled in, and the defaults and bounds it is
checked against (the model yaml's ``handler.defaults`` and ``handler.limits``). Names follow diffusers'
``StableDiffusionXLPipeline.__call__``."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from handler.contract.images import InputImage

OUTPUT_FORMATS = ("png", "jpeg", "webp")
RESPONSE_FORMATS = ("json", "image")
IMAGE_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
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
    max_timeout_s: float = 600.0
    samplers: tuple[str, ...] | None = None  # None: every sampler of handler.contract.samplers.SAMPLERS
    allowed_sizes: tuple[tuple[int, int], ...] | None = None  # (width, height); None: any size within bounds
    max_image_bytes: int = 10 * 2**20  # per input image, encoded (TorchServe's max_request_size must fit two)
    max_image_side: int = 4096  # per side of an input image, before any resize_mode
    max_loras_per_request: int = 3
    max_lora_scale: float = 2.0  # |scale| of one requested LoRA
    catalogue: tuple[tuple[str, float], ...] = ()  # (name, default scale): handler.lora_catalogue, set by settings
    refiner: bool = False  # a refiner is loaded (handler.refiner_path), set by settings
    model_scheduler: str = "EulerDiscreteScheduler"  # the model's own scheduler class (handler.model_scheduler)


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
    timeout_s: float | None = None
    sampler: str | None = None  # None: the model's own scheduler
    schedule: str = "default"
    eta: float | None = None
    strength: float = 0.8
    resize_mode: str = "none"
    keep_unmasked: bool = True
    denoising_end: float | None = None  # None: the base alone; a fraction hands over to the refiner
    aesthetic_score: float = 6.0
    negative_aesthetic_score: float = 2.5


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
    response_format: str = "json"
    stream: bool = False
    preview_every: int = 0
    timeout_s: float | None = None
    sampler: str | None = None
    schedule: str = "default"
    eta: float | None = None
    aspect_ratio: str | None = None
    original_size: tuple[int, int] | None = None  # (height, width), as in diffusers
    crops_coords_top_left: tuple[int, int] = (0, 0)
    target_size: tuple[int, int] | None = None
    negative_original_size: tuple[int, int] | None = None
    negative_crops_coords_top_left: tuple[int, int] = (0, 0)
    negative_target_size: tuple[int, int] | None = None
    image: InputImage | None = None  # img2img / inpainting: the init image, at width x height
    strength: float | None = None  # set exactly when `image` is
    mask_image: InputImage | None = None  # inpainting: white = repaint
    resize_mode: str | None = None  # set exactly when `image` is
    keep_unmasked: bool | None = None  # set exactly when `mask_image` is
    loras: tuple[tuple[str, float], ...] = ()  # (catalogue name, scale)
    denoising_end: float | None = None  # the refiner's hand-over point (handler.model.refiner)
    aesthetic_score: float | None = None  # set exactly when `denoising_end` is
    negative_aesthetic_score: float | None = None

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
        return {name: v.record() if isinstance(v, InputImage) else v for name, v in values.items()}
