"""The sampler registry: request names -> diffusers scheduler classes and options, in ONE place.

A request picks a ``sampler`` (None: the model's own scheduler, as shipped) and a ``schedule`` (how its
timesteps or sigmas are spaced). Every request builds its own scheduler from the pipeline's config with
:func:`build_scheduler`; nothing mutates the pipeline's scheduler. A schedule works with a sampler when the
sampler's scheduler class has the options the schedule sets; an impossible pair is an InvalidRequest that
names both.

Left out: ``dpmpp_sde`` (DPMSolverSDEScheduler needs torchsde, which pulls scipy) and ``lms`` (scipy), and the
``beta`` schedule (scipy): none of them is worth a scientific stack in the serving image.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidRequest


@dataclass(frozen=True)
class Sampler:
    scheduler: str  # the diffusers class name
    options: dict[str, Any] = field(default_factory=dict)  # fixed config of this sampler
    description: str = ""


SAMPLERS: dict[str, Sampler] = {
    "euler": Sampler("EulerDiscreteScheduler", description="Euler (SDXL base's default)"),
    "euler_a": Sampler("EulerAncestralDiscreteScheduler", description="Euler ancestral: draws noise every step"),
    "dpmpp_2m": Sampler(
        "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, "DPM++ 2M"
    ),
    "dpmpp_2m_sde": Sampler(
        "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}, "DPM++ 2M SDE"
    ),
    "ddim": Sampler("DDIMScheduler", description="DDIM (takes `eta`)"),
    "unipc": Sampler("UniPCMultistepScheduler", description="UniPC"),
    "deis": Sampler("DEISMultistepScheduler", description="DEIS"),
    "heun": Sampler("HeunDiscreteScheduler", description="Heun: 2 UNet forwards per step (2N-1 in all)"),
    "dpm2": Sampler("KDPM2DiscreteScheduler", description="DPM2: 2 UNet forwards per step"),
    "dpm2_a": Sampler("KDPM2AncestralDiscreteScheduler", description="DPM2 ancestral: 2 UNet forwards per step"),
    "lcm": Sampler("LCMScheduler", description="LCM: for LCM / LCM-LoRA models, 2-8 steps"),
    "tcd": Sampler("TCDScheduler", description="TCD: for TCD models (takes `eta`, its own default 0.3)"),
}

SCHEDULES: dict[str, dict[str, Any]] = {
    "default": {},  # the model's scheduler config as it is
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "trailing": {"timestep_spacing": "trailing"},  # starts at t=999: what 1-4 step distilled models want
    "leading": {"timestep_spacing": "leading"},
    "linspace": {"timestep_spacing": "linspace"},
}
SAMPLER_NAMES = tuple(SAMPLERS)
SCHEDULE_NAMES = tuple(SCHEDULES)


def scheduler_class(name: str) -> type:
    import diffusers

    return getattr(diffusers, name)


@functools.cache  # per class: a request's admission should not inspect signatures again
def schedules_of(scheduler_cls: type) -> tuple[str, ...]:
    """The schedules a scheduler class can follow: those whose options its constructor takes."""
    parameters = inspect.signature(scheduler_cls.__init__).parameters
    return tuple(name for name, options in SCHEDULES.items() if all(key in parameters for key in options))


def build_scheduler(sampler: str | None, schedule: str, eta: float | None, model_scheduler: Any) -> Any:
    """A new scheduler for one request, from the model's scheduler config (None: the model's own class).

    Raises:
        InvalidRequest: ``schedule`` does not work with ``sampler``, or ``eta`` is set for a sampler without it.
    """
    if sampler is None:
        cls, options, shown = type(model_scheduler), {}, f"the model's {type(model_scheduler).__name__}"
    else:
        cls, options, shown = scheduler_class(SAMPLERS[sampler].scheduler), SAMPLERS[sampler].options, repr(sampler)
    allowed = schedules_of(cls)
    if schedule not in allowed:
        raise InvalidRequest(
            f"`schedule` {schedule!r} does not work with `sampler` {shown}; it works with {', '.join(allowed)}",
            field="schedule",
            value=schedule,
        )
    if eta is not None and "eta" not in inspect.signature(cls.step).parameters:
        raise InvalidRequest(f"`eta` is not used by `sampler` {shown}; leave it out", field="eta", value=eta)
    return cls.from_config(model_scheduler.config, **options, **SCHEDULES[schedule])
