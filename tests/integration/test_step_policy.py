"""Priority and deadlines on a real TorchServe in continuous mode (handler.runtime.step_policy): a step budget
of one guided request, ``step_policy: priority``. Order is proven from each reply's own accounting (the call it
left at, the steps it was parked for), never from timing."""

from __future__ import annotations

import json

import pytest

from tests.conftest import tiny_yaml
from tests.integration.conftest import server_with_model_yaml
from tests.integration.test_continuous import post, started_stream


@pytest.fixture(scope="module")
def budget_server(tmp_path_factory):
    handler = {**tiny_yaml()["handler"], "step_policy": "priority", "max_rows_per_step": 2}
    server = server_with_model_yaml(
        tmp_path_factory.mktemp("budget"), continuousBatching=True, batchSize=8, handler=handler
    )
    yield server
    server.stop()


def test_a_high_priority_request_behind_low_priority_50_step_ones_finishes_before_them(budget_server):
    _, first_events, _ = started_stream(budget_server, {"prompt": "low 0", "seed": 0, "num_inference_steps": 50})
    # Streamed, each low request's headers come with its first chunk: it has joined the loop (parked: the budget
    # steps one request at a time) when post returns.
    lows = [post(budget_server, {"prompt": f"low {i}", "seed": i, "num_inference_steps": 50, "stream": True},
                 stream=True) for i in (1, 2)]  # fmt: skip
    high = post(budget_server, {"prompt": "high", "seed": 9, "priority": 5, "num_inference_steps": 4})
    assert high.status_code == 200, high.text
    results = [last_event(first_events)] + [last_event(json.loads(line) for line in low.iter_lines() if line)
                                            for low in lows]  # fmt: skip
    high_batch = high.json()["batch"]
    assert high_batch["parked_steps"] == 0 and high.json()["parameters"]["priority"] == 5
    for result in results:
        assert result["event"] == "result", result
        assert result["batch"]["joined_call"] < high_batch["joined_call"], result["batch"]
        assert result["batch"]["left_call"] > high_batch["left_call"], (result["batch"], high_batch)
        assert result["batch"]["parked_steps"] >= 4  # it waited while the high one ran


def last_event(events) -> dict:
    return list(events)[-1]


def test_an_impossible_deadline_is_a_503_with_retry_after_at_once_and_the_server_goes_on(budget_server):
    assert post(budget_server, {"prompt": "measured", "num_inference_steps": 2}).status_code == 200  # a step time
    refused = post(budget_server, {"prompt": "now", "deadline_s": 0.001, "num_inference_steps": 50})
    assert refused.status_code == 503, refused.text
    error = json.loads(refused.text)["error"]
    assert error["type"] == "DeadlineUnreachable" and error["field"] == "deadline_s"
    assert int(refused.headers["Retry-After"]) >= 1
    assert post(budget_server, {"prompt": "roomy", "deadline_s": 300, "num_inference_steps": 4}).status_code == 200
