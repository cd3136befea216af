"""One contract at every front door: random bodies, valid and invalid, get the same verdict from the job
gateway (POST /generate) as from TorchServe (/predictions), with the same 400 message and field.

The model has a LoRA catalogue (ink, film) and a refiner (tests/integration/conftest.py's options_server), so
catalogue names, sampler x schedule x eta pairs, prompts past `max_prompt_chunks` (225 tokens) and the refiner's
fields, down to a ``denoising_end`` that leaves the base or the refiner no step (the gateway reads the model's
stage schedules from the table ``python -m handler.model.step_table`` writes), are all decided by the contract at
parse. Not drawn: the transport fields the job API chooses itself (``stream``, ``response_format``,
``preview_every``).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handler.contract.samplers import SAMPLER_NAMES, SCHEDULE_NAMES
from tests.integration.jobs_stack import JobStack

ABSENT = object()


@pytest.fixture(scope="module")
def doors(tmp_path_factory, options_server):
    stack = JobStack(tmp_path_factory.mktemp("doors"), options_server).start(dispatchers=0)
    yield stack, options_server
    stack.stop()


def optional(strategy):
    return st.one_of(st.just(ABSENT), strategy)


words = st.integers(1, 150).map(lambda n: " ".join(["fox"] * n))  # 2..300 tokens: both sides of 225
bodies = st.fixed_dictionaries(
    {"prompt": st.one_of(st.sampled_from(["a lighthouse", "x"]), words)},
    optional={
        "negative_prompt": st.one_of(st.just("blurry"), words),
        "sampler": st.sampled_from([*SAMPLER_NAMES, "ddpm"]),
        "schedule": st.sampled_from([*SCHEDULE_NAMES, "cosine"]),
        "eta": st.sampled_from([0.0, 0.5, 1.5]),
        "num_inference_steps": st.sampled_from([0, 1, 2]),
        "width": st.sampled_from([64, 65]),
        "loras": st.sampled_from([[{"name": "ink"}], [{"name": "nope"}], [{"name": "film", "scale": 9}]]),
        "aesthetic_score": st.sampled_from([6.0, 11.0]),
        "seed": st.integers(0, 3),
    },
)
refined = st.fixed_dictionaries(
    {
        "prompt": st.just("a refined fox"),
        "denoising_end": st.sampled_from([0.01, 0.05, 0.3, 0.5, 0.8, 0.97, 0.999, 1.5]),
        "num_inference_steps": st.integers(1, 5),
    },
    optional={
        "sampler": st.sampled_from(["euler", "heun", "dpm2", "dpmpp_2m", "ddim", "lcm"]),
        "schedule": st.sampled_from(["default", "trailing", "karras"]),
    },
)


@settings(max_examples=90, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(bodies, refined))
def test_the_gateway_accepts_exactly_what_predictions_accepts(doors, body):
    stack, server = doors
    gateway = stack.submit(body)
    direct = server.predict(body)
    assert gateway.status_code in (202, 400), gateway.text
    assert (gateway.status_code == 202) == (direct.status_code == 200), (body, gateway.text, direct.text[:300])
    if direct.status_code == 400:
        assert gateway.json()["error"]["message"] == direct.json()["error"]["message"]
        assert gateway.json()["error"].get("field") == direct.json()["error"].get("field")
    else:
        assert stack.cancel(gateway.json()["job_id"]).status_code == 200  # nothing left queued
