"""The sampler registry: request names -> diffusers scheduler classes and options, in ONE place.

A request picks a ``sampler`` (None: the model's own scheduler, as shipped) and a ``schedule`` (how its
timesteps or sigmas are spaced). A schedule works with a sampler when the sampler's scheduler class has the
options the schedule sets (:data:`SCHEDULERS`); an impossible pair is an InvalidRequest that names both, found
by :func:`check_sampling` when the request is parsed, before any work. Every request then builds its own
scheduler (:func:`handler.model.scheduling.build_scheduler`); nothing mutates the pipeline's scheduler.

Left out: ``dpmpp_sde`` (DPMSolverSDEScheduler needs torchsde, which pulls scipy) and ``lms`` (scipy), and the
``beta`` schedule (scipy): none of them is worth a scientific stack in the serving image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from handler.contract.errors import InvalidRequest


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


@dataclass(frozen=True)
class SchedulerTraits:
    """What a diffusers scheduler class can do, as the contract needs it without importing diffusers (checked
    against diffusers' own signatures by tests/unit/test_samplers.py)."""

    sigma_schedules: bool  # takes ``use_karras_sigmas`` / ``use_exponential_sigmas``
    eta: bool  # its ``step`` takes ``eta``
    max_steps: int | None = None  # LCM / TCD: at most ``original_inference_steps`` (their default 50)

    @property
    def schedules(self) -> tuple[str, ...]:
        return tuple(name for name in SCHEDULES if self.sigma_schedules or name not in SIGMA_SCHEDULES)


SIGMA_SCHEDULES = ("karras", "exponential")
SCHEDULERS: dict[str, SchedulerTraits] = {
    "EulerDiscreteScheduler": SchedulerTraits(sigma_schedules=True, eta=False),
    "EulerAncestralDiscreteScheduler": SchedulerTraits(sigma_schedules=False, eta=False),
    "DPMSolverMultistepScheduler": SchedulerTraits(sigma_schedules=True, eta=False),
    "DDIMScheduler": SchedulerTraits(sigma_schedules=False, eta=True),
    "UniPCMultistepScheduler": SchedulerTraits(sigma_schedules=True, eta=False),
    "DEISMultistepScheduler": SchedulerTraits(sigma_schedules=True, eta=False),
    "HeunDiscreteScheduler": SchedulerTraits(sigma_schedules=True, eta=False),
    "KDPM2DiscreteScheduler": SchedulerTraits(sigma_schedules=True, eta=False),
    "KDPM2AncestralDiscreteScheduler": SchedulerTraits(sigma_schedules=True, eta=False),
    "LCMScheduler": SchedulerTraits(sigma_schedules=False, eta=False, max_steps=50),
    "TCDScheduler": SchedulerTraits(sigma_schedules=False, eta=True, max_steps=50),
}


def check_sampling(
    sampler: str | None, schedule: str, eta: float | None, model_scheduler: str, steps: int | None = None
) -> None:
    """Admission: ``schedule`` works with the sampler's scheduler class, ``eta`` is used by it and it takes
    ``steps`` (None: not checked). ``sampler`` None is the model's own class, ``model_scheduler`` (its name,
    ``handler.model_scheduler``).

    Raises:
        InvalidRequest: naming both of an impossible pair, ``eta`` for a sampler without it, or more steps than
            a distilled sampler's schedule has.
    """
    if sampler is None:
        name, shown = model_scheduler, f"the model's {model_scheduler}"
    else:
        name, shown = SAMPLERS[sampler].scheduler, repr(sampler)
    traits = SCHEDULERS[name]
    if schedule not in traits.schedules:
        raise InvalidRequest(
            f"`schedule` {schedule!r} does not work with `sampler` {shown}; it works with "
            f"{', '.join(traits.schedules)}",
            field="schedule",
            value=schedule,
        )
    if eta is not None and not traits.eta:
        raise InvalidRequest(f"`eta` is not used by `sampler` {shown}; leave it out", field="eta", value=eta)
    if traits.max_steps is not None and steps is not None and steps > traits.max_steps:
        raise InvalidRequest(
            f"`num_inference_steps` {steps} is more than `sampler` {shown} takes: at most {traits.max_steps} (its "
            "original_inference_steps)",
            field="num_inference_steps",
            value=steps,
        )
