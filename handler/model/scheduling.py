"""A request's own scheduler, built from the model's scheduler config and the request's sampler and schedule
(the names and what each class can do: :mod:`handler.contract.samplers`, checked at parse)."""

from __future__ import annotations

from typing import Any

from handler.contract.samplers import SAMPLERS, SCHEDULES, check_sampling


def scheduler_class(name: str) -> type:
    import diffusers

    return getattr(diffusers, name)


def build_scheduler(sampler: str | None, schedule: str, eta: float | None, model_scheduler: Any) -> Any:
    """A new scheduler for one request, from ``model_scheduler``'s config (None: the model's own class).

    Raises:
        InvalidRequest: as :func:`~handler.contract.samplers.check_sampling` (a request parsed against this
            model never gets here with an impossible pair; the refiner's scheduler is checked here).
    """
    check_sampling(sampler, schedule, eta, type(model_scheduler).__name__)
    cls = type(model_scheduler) if sampler is None else scheduler_class(SAMPLERS[sampler].scheduler)
    options = {} if sampler is None else SAMPLERS[sampler].options
    return cls.from_config(model_scheduler.config, **options, **SCHEDULES[schedule])
