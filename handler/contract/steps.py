"""The refiner's step split, checked at parse by every front door: a refined request hands over at
``denoising_end``, and the base and the refiner must each get at least one timestep of their own schedules.

Which timesteps a (sampler, schedule, steps) gets is a fact of the model's scheduler configs, computed by the
scheduler classes (torch). TorchServe's core asks its live schedulers (:mod:`handler.model.step_table`); the job
gateway, which imports no torch, reads the same facts from a table that module writes
(``python -m handler.model.step_table MODEL_YAML OUT.json.gz``). Both count exactly as the model's hand-over does
(:mod:`handler.model.refiner`), on timesteps floored to integers: the cutoff is an integer, so ``t >= cutoff``
holds exactly when ``floor(t) >= cutoff``.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handler.contract.errors import ConfigError, InvalidRequest

STAGES = ("base", "refiner")


@dataclass(frozen=True)
class Schedule:
    """The timesteps one stage model's scheduler sets for a (sampler, schedule, steps), floored."""

    timesteps: tuple[int, ...]
    order: int  # 2 for Heun / DPM2: two entries per step
    train_steps: int  # the config's num_train_timesteps

    def cutoff(self, denoising_end: float) -> int:
        return round(self.train_steps - denoising_end * self.train_steps)


def schedule_key(sampler: str | None, schedule: str, steps: int) -> str:
    return f"{sampler or ''}|{schedule}|{steps}"


class StepPlans:
    """The stage schedules of one model, from a source (the live schedulers) or a table written from one.

    Args:
        source (callable `(stage, sampler, schedule, steps) -> Schedule`): where schedules come from; each is
            asked once and kept.
    """

    def __init__(self, source: Callable[[str, str | None, str, int], Schedule]):
        self._source = source
        self._known: dict[tuple[str, str], Schedule] = {}

    def schedule(self, stage: str, sampler: str | None, schedule: str, steps: int) -> Schedule:
        key = (stage, schedule_key(sampler, schedule, steps))
        if key not in self._known:
            self._known[key] = self._source(stage, sampler, schedule, steps)
        return self._known[key]

    def check_refiner_split(self, request: Any) -> None:
        """Raises InvalidRequest when ``denoising_end`` leaves the base or the refiner no timestep."""
        steps, end = request.num_inference_steps, request.denoising_end
        base = self.schedule("base", request.sampler, request.schedule, steps)
        refiner = self.schedule("refiner", request.sampler, request.schedule, steps)
        start = (steps - request.denoising_steps) * base.order  # img2img runs the schedule's tail
        base_count = sum(t >= base.cutoff(end) for t in base.timesteps[start:])
        refiner_count = sum(t < refiner.cutoff(end) for t in refiner.timesteps)
        if refiner.order == 2 and refiner_count % 2 == 0:  # diffusers keeps a second-order pair whole
            refiner_count += 1
        if base_count == 0 or refiner_count == 0:
            raise InvalidRequest(
                f"`denoising_end` {end} leaves {base_count} of the {steps} steps to the base and {refiner_count} to "
                "the refiner; each needs at least one (more steps, or a hand-over nearer the middle)",
                field="denoising_end",
                value=end,
            )

    @classmethod
    def load(cls, path: str | Path) -> StepPlans:
        """From a table written by ``python -m handler.model.step_table``."""
        try:
            table = json.loads(gzip.decompress(Path(path).read_bytes()))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the step table {path}: {exc}") from None

        def source(stage: str, sampler: str | None, schedule: str, steps: int) -> Schedule:
            entry = table[stage].get(schedule_key(sampler, schedule, steps))
            if entry is None:
                raise ConfigError(
                    f"the step table {path} has no {stage} schedule for {sampler or 'the model sampler'} / "
                    f"{schedule} / {steps} steps: write it again for this model yaml"
                )
            order, train_steps, timesteps = entry
            return Schedule(tuple(timesteps), order, train_steps)

        return cls(source)

    def table(self, keys: list[tuple[str | None, str, int]]) -> dict[str, Any]:
        """The schedules of ``keys`` for both stages, as :meth:`load` reads them."""
        return {
            stage: {
                schedule_key(*key): [known.order, known.train_steps, list(known.timesteps)]
                for key in keys
                for known in [self.schedule(stage, *key)]
            }
            for stage in STAGES
        }
