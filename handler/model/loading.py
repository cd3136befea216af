"""Load an SDXL pipeline from a diffusers folder or hub id onto its device, dtype and attention backend.

Real SDXL weights and the tiny test model go through the same ``from_pretrained`` call.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from handler.contract.errors import ConfigError
from handler.contract.samplers import SCHEDULERS
from handler.contract.settings import HandlerSettings

log = logging.getLogger(__name__)


@dataclass
class LoadedPipeline:
    pipeline: Any
    device: torch.device
    dtype: torch.dtype
    attention: str  # "xformers" or "sdpa"
    source: str
    refiner: Any = None  # a StableDiffusionXLImg2ImgPipeline sharing text_encoder_2 and the VAE, or None


def resolve_device(setting: str, gpu_id: int | None = None) -> torch.device:
    """``auto``: the GPU TorchServe assigned (``gpu_id``) when CUDA is usable, else the CPU."""
    if setting == "cpu":
        return torch.device("cpu")
    if setting.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"handler.device is {setting!r} but CUDA is not available")
        return torch.device(setting)
    if torch.cuda.is_available():
        return torch.device("cuda", gpu_id or 0)
    return torch.device("cpu")


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    """``auto``: float16 on CUDA, float32 on CPU. float16 on CPU is refused (slow and lossy there)."""
    if setting == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    dtype = getattr(torch, setting)
    if dtype is torch.float16 and device.type == "cpu":
        raise ConfigError("handler.dtype float16 needs a GPU; use float32 (or bfloat16) on the CPU")
    return dtype


def xformers_available() -> bool:
    return importlib.util.find_spec("xformers") is not None


def choose_attention(setting: str, device: torch.device) -> str:
    """xformers only where it can run (importable, CUDA); PyTorch SDPA everywhere else."""
    usable = device.type == "cuda" and xformers_available()
    if setting == "xformers" and not usable:
        raise ConfigError("handler.attention is 'xformers' but xformers is not installed or the device is not CUDA")
    if setting == "sdpa":
        return "sdpa"
    return "xformers" if usable else "sdpa"


def load_unet(path: str, source: str, dtype: torch.dtype) -> Any:
    """A replacement UNet: a diffusers UNet folder (or hub id), or one ``.safetensors`` state dict on the base
    model's UNet config (how SDXL-Lightning ships its 2/4/8-step UNets)."""
    from diffusers import UNet2DConditionModel

    if not path.endswith(".safetensors"):
        return UNet2DConditionModel.from_pretrained(path, dtype=dtype)
    from safetensors.torch import load_file

    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(source, subfolder="unet"))
    unet.load_state_dict(load_file(path))
    return unet.to(dtype)


def fuse_loras(pipeline: Any, loras: tuple) -> None:
    """Fuse ``handler.loras`` into the UNet and text encoders' weights, then drop the adapters: the pipeline
    runs at base speed with the LoRAs baked in (one fixed set for every request)."""
    if not loras:
        return
    names = []
    for index, lora in enumerate(loras):
        extra = {"weight_name": lora.weight_name} if lora.weight_name else {}
        name = f"fused_{index}"
        pipeline.load_lora_weights(lora.path, adapter_name=name, **extra)
        names.append(name)
    pipeline.set_adapters(names, adapter_weights=[lora.scale for lora in loras])
    pipeline.fuse_lora(adapter_names=names)
    pipeline.unload_lora_weights()
    log.info("fused %d LoRA(s): %s", len(loras), ", ".join(f"{lora.path} x{lora.scale}" for lora in loras))


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No progress bars and no third-party notices in the model log while loading (transformers' "requires
    torchvision" for image processors SDXL never uses, diffusers' per-component bars); errors still show."""
    import diffusers
    import transformers

    verbosity = transformers.logging.get_verbosity(), diffusers.utils.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    diffusers.utils.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity[0])
        diffusers.utils.logging.set_verbosity(verbosity[1])
        transformers.logging.enable_progress_bar()
        diffusers.utils.logging.enable_progress_bar()


def load_pipeline(source: str, settings: HandlerSettings, gpu_id: int | None = None) -> LoadedPipeline:
    """Load ``source`` (a diffusers folder or hub id) as configured by ``settings`` (quietly: see
    :func:`quiet_loading`)."""
    with quiet_loading():
        return _load_pipeline(source, settings, gpu_id)


def _load_pipeline(source: str, settings: HandlerSettings, gpu_id: int | None = None) -> LoadedPipeline:
    """Load ``source`` (a diffusers folder or hub id) as configured by ``settings``.

    Args:
        source (`str`): local folder or hub id passed to ``from_pretrained``.
        settings (`HandlerSettings`): device, dtype, attention and optional VAE replacement.
        gpu_id (`int`, defaults to None): the GPU TorchServe assigned to this worker.
    """
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline

    # 1. Where and in which precision.
    device = resolve_device(settings.device, gpu_id)
    dtype = resolve_dtype(settings.dtype, device)

    # 2. Load, replacing the VAE (e.g. an fp16-safe one) or the UNet (a distilled one) when configured.
    extra: dict[str, Any] = {}
    if settings.vae_path:
        extra["vae"] = AutoencoderKL.from_pretrained(settings.vae_path, dtype=dtype)
    if settings.unet_path:
        extra["unet"] = load_unet(settings.unet_path, source, dtype)
    pipeline = StableDiffusionXLPipeline.from_pretrained(source, dtype=dtype, **extra)
    check_scheduler(pipeline.scheduler, settings.model_scheduler, "handler.model_scheduler")
    fuse_loras(pipeline, settings.loras)
    pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    refiner = load_refiner(settings.refiner_path, pipeline, dtype, device) if settings.refiner_path else None
    if refiner is not None:
        check_scheduler(refiner.scheduler, None, "the refiner's scheduler")

    # 3. Attention backend. diffusers uses SDPA by default, so only xformers needs switching on.
    attention = choose_attention(settings.attention, device)
    if attention == "xformers":
        pipeline.enable_xformers_memory_efficient_attention()
        if refiner is not None:
            refiner.enable_xformers_memory_efficient_attention()

    # 4. Optional graph compilation of the UNet (most of the compute).
    if settings.compile_mode:
        pipeline.unet = torch.compile(pipeline.unet, mode=settings.compile_mode, dynamic=False)
        if refiner is not None:
            refiner.unet = torch.compile(refiner.unet, mode=settings.compile_mode, dynamic=False)

    # SDXL's VAE overflows in float16; diffusers decodes in float32 when the VAE config says force_upcast.
    vae_upcast = dtype is torch.float16 and bool(getattr(pipeline.vae.config, "force_upcast", False))
    log.info(
        "loaded %s on %s as %s, attention=%s, compile=%s, vae decode in %s, torch threads=%d",
        source,
        device,
        str(dtype).removeprefix("torch."),
        attention,
        settings.compile_mode or "off",
        "float32 (force_upcast)" if vae_upcast else str(pipeline.vae.dtype).removeprefix("torch."),
        torch.get_num_threads(),
    )
    return LoadedPipeline(
        pipeline=pipeline, device=device, dtype=dtype, attention=attention, source=source, refiner=refiner
    )


def check_scheduler(scheduler: Any, expected: str | None, what: str) -> None:
    """The contract checks requests against the scheduler class the yaml names (handler.model_scheduler),
    before any model is loaded: a model with another class must say so, or its requests would be judged by the
    wrong rules."""
    name = type(scheduler).__name__
    if name not in SCHEDULERS:
        raise ConfigError(f"{what} is {name}, which handler.contract.samplers.SCHEDULERS does not describe")
    if expected is not None and name != expected:
        raise ConfigError(f"{what} is {expected!r} but the model's scheduler is {name!r}: set {what}: {name}")


def load_refiner(path: str, base: Any, dtype: torch.dtype, device: torch.device) -> Any:
    """The SDXL refiner, sharing the base's second text encoder and VAE (as diffusers' docs show): only its
    UNet (and scheduler config) is loaded from ``path``."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        path, text_encoder_2=base.text_encoder_2, vae=base.vae, dtype=dtype
    )
    if not refiner.config.requires_aesthetics_score:
        log.warning("refiner %s does not take aesthetic scores (requires_aesthetics_score is false)", path)
    refiner.to(device)
    refiner.set_progress_bar_config(disable=True)
    log.info("loaded refiner %s (sharing text_encoder_2 and the VAE)", path)
    return refiner
