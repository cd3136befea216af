"""The refiner's step split at parse (handler.contract.steps): the contract's verdict on a ``denoising_end`` is
the model's own hand-over's (handler.model.refiner, at admission), from the live schedulers and from the table
the torch-free job gateway reads."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from handler.contract.errors import InvalidRequest
from handler.contract.parse import parse_request
from handler.contract.steps import StepPlans
from handler.model.loading import load_pipeline
from handler.model.step_table import every_key, write_table
from handler.model.tiny_model import save_tiny_pipeline
from handler.runtime.core import Core
from tests.conftest import tiny_yaml
from tests.images import b64, picture

IMAGE = b64(picture(64, 64))


@pytest.fixture(scope="module")
def refiner_dir(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-refiner", refiner=True)


@pytest.fixture(scope="module")
def model_yaml(tmp_path_factory, refiner_dir):
    """The tiny model with a refiner, at most 6 steps (a small table)."""
    config = tiny_yaml()
    config["handler"]["refiner_path"] = str(refiner_dir)
    config["handler"]["limits"]["max_inference_steps"] = 6
    path = tmp_path_factory.mktemp("yaml") / "model.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def core(tiny_model_dir, model_yaml):
    from handler.contract.settings import HandlerSettings

    model = HandlerSettings.from_yaml(yaml.safe_load(model_yaml.read_text()))
    return Core(load_pipeline(str(tiny_model_dir), model), model)


splits = st.fixed_dictionaries(
    {
        "prompt": st.just("a fox"),
        "denoising_end": st.sampled_from([0.001, 0.02, 0.05, 0.2, 0.5, 0.9, 0.97, 0.99, 0.999]),
        "num_inference_steps": st.integers(1, 6),
        "sampler": st.sampled_from(["euler", "euler_a", "heun", "dpm2", "dpmpp_2m", "ddim", "unipc", "lcm", "tcd"]),
        "schedule": st.sampled_from(["default", "trailing", "leading", "linspace"]),
    },
    optional={"image": st.just(IMAGE), "strength": st.sampled_from([0.5, 1.0])},
)


def verdict(call):
    try:
        call()
    except InvalidRequest as exc:
        return exc.message
    return None


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=splits)
def test_the_contract_refuses_exactly_the_splits_the_models_hand_over_refuses(core, body):
    """Admission by the model (no step plans at parse) and the contract's plans, live and from the table, agree
    on every drawn split, with the same message."""
    if "strength" in body and "image" not in body:
        body = {**body, "image": IMAGE}
    limits, defaults = core._bounds
    assume(verdict(lambda: parse_request(body, limits, defaults)) is None)  # only the split is in question
    request = parse_request(body, limits, defaults)
    model_says = verdict(lambda: core.denoiser.start(replace(request, seed=1)))  # plan_refiner: the hand-over
    assert verdict(lambda: core.step_plans.check_refiner_split(request)) == model_says, body


def test_the_table_holds_the_live_schedules(tmp_path, core, model_yaml, tiny_model_dir):
    out = tmp_path / "steps.json.gz"
    count = write_table(model_yaml, tiny_model_dir, out)
    table = StepPlans.load(out)
    keys = every_key(core.settings)
    assert count == len(keys) and ("lcm", "default", 6) in keys and (None, "karras", 1) in keys
    for key in keys:
        for stage in ("base", "refiner"):
            assert table.schedule(stage, *key) == core.step_plans.schedule(stage, *key), (stage, key)


def test_a_split_leaving_a_stage_no_step_is_refused_at_parse_before_any_work(core, monkeypatch):
    started = []
    start = core.denoiser.start
    monkeypatch.setattr(core.denoiser, "start", lambda request: started.append(request.prompt) or start(request))
    replies = core.handle([{"body": json.dumps(b).encode()} for b in (
        {"prompt": "ok", "seed": 1, "denoising_end": 0.5, "num_inference_steps": 4},
        {"prompt": "x", "denoising_end": 0.02, "num_inference_steps": 4},
    )])  # fmt: skip
    assert [r.status for r in replies] == [200, 400]
    assert "leaves 0 of the 4 steps to the base and 4 to the refiner" in replies[1].json()["error"]["message"]
    assert started == ["ok"]  # the refused one never reached the model (no text encoding, no LoRA, no latents)
