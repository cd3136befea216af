"""Deadline- and priority-aware steps (handler.runtime.step_policy): each policy's order on a stubbed clock and
step cost; parked-and-resumed requests make their solo images (deterministic and ancestral samplers, a LoRA row,
an img2img row); a deadline the measured step time cannot meet is a 503 with Retry-After before any work."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import pytest

from handler.contract.errors import ConfigError, DeadlineUnreachable
from handler.contract.settings import CatalogueLora, HandlerSettings
from handler.model.loading import load_pipeline
from handler.runtime.core import Core
from handler.runtime.step_policy import StepPolicy, check_deadline
from tests.helpers import body_pixels, make_lora
from tests.images import b64, picture


def flight(key, arrived, priority=0, deadline_s=None, rows=2, step=0, total=10):
    return SimpleNamespace(
        key=key,
        arrived=arrived,
        request=SimpleNamespace(priority=priority, deadline_s=deadline_s),
        state=SimpleNamespace(unet_rows=rows, step=step, total_steps=total),
    )


def keys(flights):
    return [f.key for f in flights]


FLIGHTS = [
    flight("early-low", 0.0, priority=0, deadline_s=30),
    flight("mid-high", 1.0, priority=5),
    flight("late-urgent", 2.0, priority=1, deadline_s=3, total=4),
    flight("later-long", 3.0, priority=1, deadline_s=4, total=40),
]


@pytest.mark.parametrize(
    ("policy", "chosen"),
    [
        ("fifo", ["early-low", "mid-high"]),
        ("priority", ["mid-high", "late-urgent"]),  # 5, then the 1s by arrival
        ("edf", ["late-urgent", "later-long"]),  # deadlines 5 and 7 before 30; none last
        ("slack", ["late-urgent", "later-long"]),
    ],
)
def test_each_policy_picks_its_order_within_the_row_budget(policy, chosen):
    picked = StepPolicy(policy, max_rows=4).choose(FLIGHTS, now=4.0, step_s=0.1)
    assert sorted(keys(picked)) == sorted(chosen)


def test_slack_weighs_the_steps_left_at_the_measured_step_time():
    """Same deadline: the one with more steps left has less to spare."""
    short, long_ = flight("short", 0.0, deadline_s=10, step=0, total=5), flight("long", 1.0, deadline_s=10, total=80)
    assert keys(StepPolicy("slack", max_rows=2).choose([short, long_], now=1.0, step_s=0.1)) == ["long"]
    assert keys(StepPolicy("edf", max_rows=2).choose([short, long_], now=1.0, step_s=0.1)) == ["short"]


def test_priority_ages_so_a_waiting_low_priority_request_is_not_starved():
    """One level per 30 s waited: a request 2 levels up outranks an older one only if it came within 60 s."""
    policy = StepPolicy("priority", max_rows=2, aging_s=30.0)
    old = flight("old", 0.0, priority=0)
    assert keys(policy.choose([old, flight("new", 50.0, priority=2)], now=50.0, step_s=None)) == ["new"]
    assert keys(policy.choose([old, flight("new", 70.0, priority=2)], now=70.0, step_s=None)) == ["old"]


def test_the_budget_always_steps_someone_and_fills_with_what_fits():
    big, small = flight("big", 0.0, rows=8), flight("small", 1.0, rows=2)
    assert keys(StepPolicy("fifo", max_rows=4).choose([big, small], now=2.0, step_s=None)) == ["big"]
    three = [flight("a", 0.0, rows=2), flight("b", 1.0, rows=4), flight("c", 2.0, rows=2)]
    assert keys(StepPolicy("fifo", max_rows=4).choose(three, now=3.0, step_s=None)) == ["a", "c"]
    assert StepPolicy("fifo").choose(three, now=3.0, step_s=None) == three  # no budget: everyone


def test_a_deadline_the_measured_step_time_misses_is_refused_with_the_estimate():
    request = SimpleNamespace(deadline_s=1.0, denoising_steps=20)
    import time

    with pytest.raises(DeadlineUnreachable) as refused:
        check_deadline(request, time.perf_counter(), step_s=0.1)
    assert refused.value.status == 503 and refused.value.field == "deadline_s"
    assert 2.0 <= refused.value.retry_after_s < 2.5
    check_deadline(request, time.perf_counter(), step_s=0.01)  # 0.2 s: fine
    check_deadline(request, time.perf_counter(), step_s=None)  # nothing measured yet: admitted


def test_the_step_clock_estimates_by_rows_so_a_burst_does_not_lock_out_the_idle_server():
    from handler.runtime.step_policy import StepClock

    clock = StepClock()
    assert clock.estimate(2) is None
    clock.record(2, 0.010)  # warmup: one guided image
    for _ in range(20):
        clock.record(8, 0.040)  # a burst of 4 guided images per step
    assert clock.estimate(2) == pytest.approx(0.010)  # idle again: one request's own step, not the burst's
    assert clock.estimate(4) == pytest.approx(0.020)  # between two known counts: interpolated
    assert clock.estimate(16) == pytest.approx(0.080)  # past the largest: proportional
    assert clock.estimate(1) == pytest.approx(0.010)  # below the smallest: no faster than it
    clock.record(2, 0.020)
    assert clock.estimate(2) == pytest.approx(0.012)  # a moving average (0.2 of the new one)
    import time

    later = time.perf_counter() + 61
    assert clock.estimate(2, now=later) is None  # a minute without steps: nothing to refuse on


def test_bad_policy_settings_fail_at_startup():
    with pytest.raises(ConfigError, match="step_policy must be one of fifo, priority, edf, slack but is 'lifo'"):
        HandlerSettings.from_yaml({"handler": {"step_policy": "lifo"}})
    with pytest.raises(ConfigError, match="max_rows_per_step must be >= 1"):
        HandlerSettings.from_yaml({"handler": {"max_rows_per_step": 0}})


@pytest.fixture(scope="module")
def budget_settings(tiny_settings, tmp_path_factory):
    path = make_lora(tmp_path_factory.mktemp("loras") / "ink", seed=1)
    limits = tiny_settings.limits.__class__(**{**tiny_settings.limits.__dict__, "catalogue": (("ink", 0.8),)})
    return tiny_settings.with_changes(
        lora_catalogue={"ink": CatalogueLora(path, scale=0.8)}, limits=limits, overlap_side_work=False
    )


BODIES = [
    {"prompt": "a red cat", "seed": 1, "priority": 0},
    {"prompt": "a red cat", "seed": 2, "priority": 3, "sampler": "euler_a"},
    {"prompt": "on the hill", "seed": 3, "priority": 1, "loras": [{"name": "ink"}]},
    {"prompt": "in the snow", "seed": 4, "priority": 2, "image": "IMAGE", "strength": 0.8},
]


def bodies(steps: int) -> list[dict]:
    image = b64(picture(64, 64, seed=3))
    return [{**b, "num_inference_steps": steps, **({"image": image} if "image" in b else {})} for b in BODIES]


@pytest.mark.parametrize("continuous", [False, True])
def test_parked_and_resumed_requests_equal_their_solo_images(tiny_model_dir, budget_settings, continuous):
    """A budget of 2 UNet rows: one guided request steps at a time, the highest priority first, the others parked
    at their step; every image equals the one its request makes alone, with no budget."""
    from tests.helpers import Frontend

    counter = itertools.count(1000)
    free = Core(load_pipeline(str(tiny_model_dir), budget_settings), budget_settings, lambda: next(counter))
    solo = [body_pixels(free.handle([{"body": json.dumps(b).encode()}])[0].json()) for b in bodies(5)]
    settings = budget_settings.with_changes(
        step_policy="priority", max_rows_per_step=2, continuous=continuous, steps_per_call=1
    )
    core = Core(load_pipeline(str(tiny_model_dir), settings), settings, lambda: next(counter))
    if continuous:
        frontend = Frontend(core, batch_size=len(BODIES))
        responses = [frontend.submit(body) for body in bodies(5)]
        frontend.run_until_idle()
        documents = [response.json() for response in responses]
        left = [document["batch"]["left_call"] for document in documents]
        assert left[1] < left[3] < left[2] < left[0], left  # priorities 3, 2, 1, 0 finish in that order
    else:
        documents = [reply.json() for reply in core.handle([{"body": json.dumps(b).encode()} for b in bodies(5)])]
    parked = [document["batch"]["parked_steps"] for document in documents]
    # one at a time by priority: #1 (5 steps), #3 (img2img: 4), #2 (5), #0; each waits for those before it
    assert parked == [14, 0, 9, 5], parked
    for alone, document in zip(solo, documents, strict=True):
        assert abs(body_pixels(document) - alone).max() <= 1


def test_an_impossible_deadline_is_a_503_with_retry_after_beside_requests_that_run(core):
    rows = [{"body": json.dumps(body).encode()} for body in
            ({"prompt": "fine", "seed": 1}, {"prompt": "now", "deadline_s": 0.001, "num_inference_steps": 50},
             {"prompt": "roomy", "deadline_s": 600, "seed": 2})]  # fmt: skip
    core.handle(rows[:1])  # a step measured
    replies = core.handle(rows)
    assert [reply.status for reply in replies] == [200, 503, 200]
    assert replies[1].json()["error"]["field"] == "deadline_s" and int(replies[1].headers["Retry-After"]) >= 1


def test_deadlines_met_and_missed_become_metrics_by_priority(core):
    from handler.runtime.metrics import DEADLINES, call_metrics

    bodies = [{"prompt": "roomy", "deadline_s": 600, "priority": 2}, {"prompt": "none"},
              {"prompt": "tight", "deadline_s": 1e-9, "priority": 7}]  # fmt: skip
    call = core.run(core.parse([{"body": json.dumps(body).encode()} for body in bodies]))
    replies = core.render(call)  # nothing measured yet in this core: the tight one is admitted, and misses
    assert [reply.status for reply in replies] == [200, 200, 200]
    counted = [(o.labels["Outcome"], o.labels["Priority"]) for o in call_metrics(call.size, call.ended)
               if o.spec == DEADLINES]  # fmt: skip
    assert sorted(counted) == [("met", "2"), ("missed", "7")]


def test_a_streamed_request_hears_parked_once_per_wait_then_progress_again(tiny_loaded, tiny_settings):
    from tests.helpers import Frontend

    settings = tiny_settings.with_changes(continuous=True, step_policy="priority", max_rows_per_step=2,
                                          overlap_side_work=False)  # fmt: skip
    frontend = Frontend(Core(tiny_loaded, settings), batch_size=4)
    low = frontend.submit({"prompt": "low", "seed": 1, "num_inference_steps": 4, "stream": True})
    frontend.call()
    frontend.call()
    frontend.submit({"prompt": "high", "seed": 2, "num_inference_steps": 3, "priority": 5})
    frontend.run_until_idle()
    events = [(event["event"], event.get("step")) for event in low.events()]
    assert events == [("progress", 1), ("progress", 2), ("parked", 2), ("progress", 3), ("progress", 4),
                      ("result", None)], events  # fmt: skip
