"""The ``handler:`` section of the model yaml, read into one typed settings object.

Unknown keys are a startup error (a typo must not silently fall back to a default). Every key, its default
and meaning is listed in :data:`HandlerSettings` below and in the README's configuration reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from handler.contract.errors import ConfigError, InvalidRequest
from handler.contract.fields import OUTPUT_FORMATS
from handler.contract.parse import parse_request
from handler.contract.request import Defaults, Limits
from handler.contract.samplers import SAMPLER_NAMES, SCHEDULERS

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float16", "bfloat16", "float32")
ATTENTIONS = ("auto", "sdpa", "xformers")
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class CatalogueLora:
    """One ``handler.lora_catalogue`` entry."""

    path: str  # a folder, hub id or .safetensors file
    scale: float = 1.0  # a request's scale when it gives none
    weight_name: str | None = None


@dataclass(frozen=True)
class FusedLora:
    """A LoRA fused into the pipeline's weights at load (``handler.loras``), e.g. LCM-LoRA for 4-step SDXL."""

    path: str  # a folder, hub id or .safetensors file
    scale: float = 1.0
    weight_name: str | None = None  # the file inside a folder or hub repo, when it holds several


STEP_POLICIES = ("fifo", "priority", "edf", "slack")


@dataclass(frozen=True)
class WarmupShape:
    """One warmup generation run in ``initialize`` before the model reports READY."""

    width: int
    height: int
    num_inference_steps: int = 2
    batch_images: int = 1


@dataclass(frozen=True)
class HandlerSettings:
    """Everything the handler reads from the model yaml's ``handler:`` section.

    Args:
        model_path (`str`, defaults to None): a diffusers folder or hub id to load; None loads the folder
            packed into the archive (the model dir).
        vae_path (`str`, defaults to None): optional replacement VAE (e.g. an fp16-safe one) folder or hub id.
        unet_path (`str`, defaults to None): optional replacement UNet: a diffusers UNet folder or hub id, or one
            ``.safetensors`` state dict for the base model's UNet config (SDXL-Lightning's N-step UNets).
        loras (`list`, defaults to none): LoRAs fused into the weights at load, each ``{path, scale,
            weight_name}`` (LCM-LoRA, a style LoRA): every request gets them, at no cost per step.
        lora_catalogue (`dict`, defaults to none): LoRAs requests may ask for by name (``loras`` field), each
            ``name: {path, scale, weight_name}``; loaded on first use, applied per row
            (:mod:`handler.model.lora_routing`).
        max_loaded_loras (`int`, defaults to 4): catalogue LoRAs kept loaded (LRU; in-use ones are never evicted).
        lora_batching (`str`, defaults to "mixed"): "mixed" routes each row's LoRAs inside one shared forward;
            "grouped" applies every catalogue LoRA with PEFT to forwards of one LoRA set each (the fallback
            DoRA always gets; for comparison, bench/lora_mix.py).
        model_scheduler (`str`, defaults to "EulerDiscreteScheduler"): the class of the model's own scheduler (its
            ``scheduler/scheduler_config.json``), so that requests without a ``sampler`` are checked at parse,
            by every front door, without loading the model; a model whose scheduler differs fails at startup.
        refiner_path (`str`, defaults to None): an SDXL refiner (diffusers folder or hub id) sharing the base's
            ``text_encoder_2`` and VAE; requests with ``denoising_end`` hand over to it (:mod:`handler.model.refiner`).
        device (`str`, defaults to "auto"): "auto" uses the GPU TorchServe assigns, else the CPU.
        dtype (`str`, defaults to "auto"): "auto" is float16 on CUDA and float32 on CPU.
        attention (`str`, defaults to "auto"): "auto" uses xformers when importable and on CUDA, else
            PyTorch SDPA; "xformers" fails at startup when it cannot be used.
        max_images_per_call (`int`, defaults to 8): most images one pipeline call may make; larger groups
            are split.
        max_response_bytes (`int`, defaults to 50 MiB): a reply larger than this becomes a 507 error instead
            of being sent; keep it <= config.properties ``max_response_size`` (TorchServe kills a worker that
            sends more).
        png_compress_level (`int`, defaults to 6): zlib level for PNG (0-9; lower is faster, bigger).
        jpeg_quality / webp_quality (`int`, defaults to 90): encoder quality (1-100).
        encode_threads (`int`, defaults to 8): threads encoding a batch's images in parallel.
        compile_mode (`str`, defaults to None): ``torch.compile`` the UNet with this mode ("default",
            "max-autotune", ...); None is eager. Each new batch shape compiles once: list them in ``warmup``.
        steps_per_call (`int`, defaults to 1): continuous batching only: denoising steps every in-flight
            request advances per handler call. More steps per call cost less per-call overhead but make
            joiners wait longer for the next step boundary and send progress less often.
        step_policy (`str`, defaults to "fifo"): which requests in flight take the next step when
            ``max_rows_per_step`` cannot take them all (:mod:`handler.runtime.step_policy`): "fifo" (arrival),
            "priority" (``priority``, aged), "edf" (earliest ``deadline_s``), "slack" (least time to spare
            before the deadline at the measured step time, then priority). The others wait, parked, and resume
            at the same step: their images do not change.
        max_rows_per_step (`int`, defaults to None): UNet rows (a request with guidance is 2 per image) stepped
            per step, over all groups; None steps every request in flight (no choice to make). With
            continuous batching, let TorchServe's ``batchSize`` admit more requests than this, so the policy
            has some to choose from.
        priority_aging_s (`float`, defaults to 30): a waiting request gains one priority level per this many
            seconds in the engine ("priority" and "slack").
        overlap_side_work (`bool` or "auto", defaults to "auto"): finishers' VAE decode + image encoding run
            on a side thread (and CUDA stream) beside the shared denoising steps, instead of inside them where
            every request still denoising waits for them. "auto" is on for CUDA and off
            on a CPU, where the side thread competes with the steps for the same cores (measured: worse).
        continuous (`bool`, defaults to False): step-level continuous batching (:mod:`handler.runtime.core`).
            Not a ``handler:`` key: it is TorchServe's own top-level ``continuousBatching`` key, so the
            frontend and the handler cannot disagree about the mode.
        memory_ceiling_latent_pixels (`int`, defaults to None): fault injection: a UNet forward over more
            latent pixels (rows x h x w) than this fails as out of memory, to exercise the split-and-retry
            path on a CPU. Leave None in production.
        warmup (`list`, defaults to one run at the default size): shapes generated once in ``initialize``.
        defaults / limits: request defaults and bounds, see :mod:`handler.contract.fields`.
    """

    model_path: str | None = None
    vae_path: str | None = None
    unet_path: str | None = None
    loras: tuple[FusedLora, ...] = ()
    lora_catalogue: dict[str, CatalogueLora] = field(default_factory=dict)
    max_loaded_loras: int = 4
    lora_batching: str = "mixed"
    model_scheduler: str = "EulerDiscreteScheduler"
    refiner_path: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    attention: str = "auto"
    max_images_per_call: int = 8
    max_response_bytes: int = 50 * 1024 * 1024
    png_compress_level: int = 6
    jpeg_quality: int = 90
    webp_quality: int = 90
    encode_threads: int = 8
    compile_mode: str | None = None
    steps_per_call: int = 1
    step_policy: str = "fifo"
    max_rows_per_step: int | None = None
    priority_aging_s: float = 30.0
    overlap_side_work: bool | str = "auto"
    continuous: bool = False
    memory_ceiling_latent_pixels: int | None = None
    warmup: tuple[WarmupShape, ...] | None = None
    defaults: Defaults = field(default_factory=Defaults)
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_yaml(cls, model_yaml: dict[str, Any] | None) -> HandlerSettings:
        """Read ``model_yaml["handler"]`` (TorchServe's ``context.model_yaml_config``)."""
        section = dict((model_yaml or {}).get("handler") or {})
        limits = dict(section.pop("limits", None) or {})
        if "samplers" in limits:  # a yaml list: the samplers requests may choose from
            samplers = limits["samplers"]
            if not isinstance(samplers, list) or not samplers or not set(samplers) <= set(SAMPLER_NAMES):
                raise ConfigError(f"handler.limits.samplers must be a list of {', '.join(SAMPLER_NAMES)}: {samplers!r}")
            limits["samplers"] = tuple(samplers)
        if "allowed_sizes" in limits:  # a yaml list of [width, height]: the only sizes requests may ask for
            sizes = limits["allowed_sizes"]
            if not isinstance(sizes, list) or not sizes or not all(_is_size(size) for size in sizes):
                raise ConfigError(f"handler.limits.allowed_sizes must be a list of [width, height]: {sizes!r}")
            limits["allowed_sizes"] = tuple(tuple(size) for size in sizes)
        limits = _build(Limits, limits, "handler.limits")
        defaults = _build(Defaults, section.pop("defaults", None), "handler.defaults")
        loras = section.pop("loras", None)
        if loras is not None:
            if not isinstance(loras, list):
                raise ConfigError(f"handler.loras must be a list of {{path, scale, weight_name}} but is {loras!r}")
            loras = tuple(_build(FusedLora, lora, "handler.loras[]") for lora in loras)
        catalogue = section.pop("lora_catalogue", None) or {}
        if not isinstance(catalogue, dict) or not all(isinstance(name, str) for name in catalogue):
            raise ConfigError(f"handler.lora_catalogue must map names to {{path, scale, weight_name}}: {catalogue!r}")
        catalogue = {
            name: _build(CatalogueLora, entry, f"handler.lora_catalogue.{name}") for name, entry in catalogue.items()
        }
        limits = replace(
            limits,
            catalogue=tuple((name, entry.scale) for name, entry in catalogue.items()),
            refiner=bool(section.get("refiner_path")),
            model_scheduler=section.get("model_scheduler", cls.model_scheduler),
        )
        warmup = section.pop("warmup", None)
        if warmup is not None:
            if not isinstance(warmup, list):
                raise ConfigError(f"handler.warmup must be a list of shapes but is {warmup!r}")
            warmup = tuple(_build(WarmupShape, shape, "handler.warmup[]") for shape in warmup)
        overlap = section.pop("overlap_side_work", "auto")
        if not (overlap == "auto" or isinstance(overlap, bool)):
            raise ConfigError(f"handler.overlap_side_work must be auto, true or false but is {overlap!r}")
        continuous = (model_yaml or {}).get("continuousBatching", False)
        if not isinstance(continuous, bool):
            raise ConfigError(f"continuousBatching must be true or false but is {continuous!r}")
        settings = _build(
            cls,
            section,
            "handler",
            limits=limits,
            defaults=defaults,
            warmup=warmup,
            loras=loras or (),
            lora_catalogue=catalogue,
            continuous=continuous,
            overlap_side_work=overlap,
        )
        settings.check()
        return settings

    def check(self) -> None:
        if self.model_scheduler not in SCHEDULERS:
            raise ConfigError(
                f"handler.model_scheduler must be one of {', '.join(SCHEDULERS)} but is {self.model_scheduler!r}"
            )
        for name, allowed in (("device", DEVICES), ("dtype", DTYPES), ("attention", ATTENTIONS)):
            value = getattr(self, name)
            if value not in allowed and not (name == "device" and str(value).startswith("cuda:")):
                raise ConfigError(f"handler.{name} must be one of {', '.join(allowed)} but is {value!r}")
        if self.defaults.output_format not in OUTPUT_FORMATS:
            raise ConfigError(f"handler.defaults.output_format must be one of {OUTPUT_FORMATS}")
        if not 0 <= self.png_compress_level <= 9:
            raise ConfigError(f"handler.png_compress_level must be 0..9 but is {self.png_compress_level}")
        if self.compile_mode not in COMPILE_MODES:
            raise ConfigError(f"handler.compile_mode must be one of {COMPILE_MODES} but is {self.compile_mode!r}")
        if self.encode_threads < 1:
            raise ConfigError(f"handler.encode_threads must be >= 1 but is {self.encode_threads}")
        if self.lora_catalogue and self.compile_mode is not None:
            raise ConfigError("handler.lora_catalogue cannot be combined with compile_mode: per-row LoRA hooks "
                              "break the compiled graph (fuse a fixed LoRA with handler.loras instead)")  # fmt: skip
        if self.lora_batching not in ("mixed", "grouped"):
            raise ConfigError(f"handler.lora_batching must be mixed or grouped but is {self.lora_batching!r}")
        if self.max_loaded_loras < 1:
            raise ConfigError(f"handler.max_loaded_loras must be >= 1 but is {self.max_loaded_loras}")
        if self.step_policy not in STEP_POLICIES:
            raise ConfigError(
                f"handler.step_policy must be one of {', '.join(STEP_POLICIES)} but is {self.step_policy!r}"
            )
        if self.max_rows_per_step is not None and self.max_rows_per_step < 1:
            raise ConfigError(f"handler.max_rows_per_step must be >= 1 or null but is {self.max_rows_per_step}")
        if self.priority_aging_s <= 0:
            raise ConfigError(f"handler.priority_aging_s must be > 0 but is {self.priority_aging_s}")
        if self.steps_per_call < 1:
            raise ConfigError(f"handler.steps_per_call must be >= 1 but is {self.steps_per_call}")
        if self.max_images_per_call < self.limits.max_images_per_prompt:
            raise ConfigError("handler.max_images_per_call must be >= handler.limits.max_images_per_prompt")
        check_defaults(self.limits, self.defaults)

    def overlaps_side_work(self, device_type: str) -> bool:
        """``overlap_side_work`` resolved for a device type ("cuda", "cpu")."""
        if self.overlap_side_work == "auto":
            return device_type == "cuda"
        return bool(self.overlap_side_work)

    def warmup_shapes(self) -> tuple[WarmupShape, ...]:
        """``warmup`` as configured; else every allowed size when the yaml lists them; else the default size."""
        if self.warmup is not None:
            return self.warmup
        if self.limits.allowed_sizes is not None:
            return tuple(WarmupShape(width, height) for width, height in self.limits.allowed_sizes)
        return (WarmupShape(self.defaults.width, self.defaults.height),)

    def with_changes(self, **changes: Any) -> HandlerSettings:
        return replace(self, **changes)


def _build(cls: type, values: Any, where: str, **fixed: Any) -> Any:
    values = dict(values or {})
    known = {f.name for f in fields(cls)} - set(fixed)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for f in fields(cls):
        default = f.default
        if f.name in values and isinstance(default, (bool, int, float, str)):
            value = values[f.name]
            expected = (int, float) if type(default) is float else type(default)
            if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, expected):
                raise ConfigError(f"{where}.{f.name} must be {type(default).__name__} but is {value!r}")
    try:
        return cls(**values, **fixed)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def check_defaults(limits: Limits, defaults: Defaults) -> None:
    """Fail at startup when the configured defaults would not pass the configured bounds."""
    try:
        parse_request({"prompt": "check"}, limits, defaults)
    except InvalidRequest as exc:
        raise ConfigError(f"handler.defaults break handler.limits: {exc.message}") from None
    if limits.min_size > limits.max_size or limits.min_size < limits.size_multiple:
        raise ConfigError(f"handler.limits: need size_multiple <= min_size <= max_size, got {limits}")


def _is_size(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value)
