"""The model's stage schedules, from its live schedulers (:class:`handler.contract.steps.StepPlans`' source), and
the table the torch-free job gateway reads instead:

    python -m handler.model.step_table MODEL_YAML MODEL_FOLDER OUT.json.gz

writes every (sampler, schedule, steps) the yaml's limits allow, for the base and the refiner. Only a model
with a refiner (``handler.refiner_path``) needs it.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import math
from pathlib import Path
from typing import Any

from handler.contract.samplers import SAMPLER_NAMES, SAMPLERS, SCHEDULERS
from handler.contract.settings import HandlerSettings
from handler.contract.steps import Schedule, StepPlans
from handler.model.scheduling import build_scheduler


def live_step_plans(base_scheduler: Any, refiner_scheduler: Any) -> StepPlans:
    """Plans from the pipelines' own schedulers (each request's scheduler is built from them the same way)."""
    templates = {"base": base_scheduler, "refiner": refiner_scheduler}

    @functools.cache
    def scheduler_for(stage: str, sampler: str | None, schedule: str) -> Any:  # only its timesteps are read
        return build_scheduler(sampler, schedule, None, templates[stage])

    def source(stage: str, sampler: str | None, schedule: str, steps: int) -> Schedule:
        scheduler = scheduler_for(stage, sampler, schedule)
        scheduler.set_timesteps(steps)
        floors = tuple(math.floor(t) for t in scheduler.timesteps.tolist())
        return Schedule(floors, scheduler.order, scheduler.config.num_train_timesteps)

    return StepPlans(source)


def every_key(settings: HandlerSettings) -> list[tuple[str | None, str, int]]:
    """Each (sampler, schedule, steps) a request to this model can name (impossible pairs left out)."""
    limits = settings.limits
    samplers = [None, *(limits.samplers or SAMPLER_NAMES)]
    keys = []
    for sampler in samplers:
        traits = SCHEDULERS[limits.model_scheduler if sampler is None else SAMPLERS[sampler].scheduler]
        most = min(limits.max_inference_steps, traits.max_steps or limits.max_inference_steps)
        for schedule in traits.schedules:
            keys += [(sampler, schedule, steps) for steps in range(1, most + 1)]
    return keys


def write_table(model_yaml: str | Path, model_folder: str | Path, out: str | Path) -> int:
    """Write the table of ``model_yaml``'s model (scheduler configs only: no weights are loaded); returns its
    number of schedules."""
    import diffusers
    import yaml

    settings = HandlerSettings.from_yaml(yaml.safe_load(Path(model_yaml).read_text()))
    if not settings.refiner_path:
        raise SystemExit(f"{model_yaml} has no handler.refiner_path: its requests have no step split to check")
    base = getattr(diffusers, settings.model_scheduler).from_pretrained(
        settings.model_path or str(model_folder), subfolder="scheduler"
    )
    refiner_config = diffusers.DDPMScheduler.load_config(settings.refiner_path, subfolder="scheduler")
    refiner = getattr(diffusers, refiner_config["_class_name"]).from_config(refiner_config)
    keys = every_key(settings)
    table = live_step_plans(base, refiner).table(keys)
    Path(out).write_bytes(gzip.compress(json.dumps(table, separators=(",", ":")).encode(), mtime=0))
    return len(keys)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_yaml")
    parser.add_argument("model_folder", help="the diffusers folder the yaml serves (when it sets no model_path)")
    parser.add_argument("out")
    args = parser.parse_args(argv)
    count = write_table(args.model_yaml, args.model_folder, args.out)
    print(f"wrote {count} schedules per stage to {args.out} ({Path(args.out).stat().st_size} bytes)")


if __name__ == "__main__":
    main()
