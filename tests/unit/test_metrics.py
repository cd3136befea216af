"""The handler's metrics: declared in the shipped metrics config, and computed right from real batches."""

import json
import time

import yaml

from handler.runtime.metrics import BATCH, IMAGES, LATENCY, METRICS, REJECTED, REQUESTS, STAGE, call_metrics
from scripts.torchserve_control import SHIPPED_CONFIG, read_properties
from tests.conftest import REPO_ROOT


def test_every_metric_is_declared_in_the_shipped_metrics_config():
    properties = read_properties(SHIPPED_CONFIG)
    assert properties["metrics_mode"] == "prometheus"
    config = yaml.safe_load((REPO_ROOT / properties["metrics_config"]).read_text())
    model_metrics = config["model_metrics"]
    for spec in METRICS:
        declared = {m["name"]: m for m in model_metrics[spec.kind]}
        assert declared[spec.name] == {
            "name": spec.name,
            "unit": spec.unit,
            "dimensions": [*spec.labels, "ModelName", "Level"],
        }
    assert any(m["name"] == "HandlerTime" for m in model_metrics["gauge"])  # TorchServe's own stay
    assert "ts_inference_requests_total" in {m["name"] for m in config["ts_metrics"]["counter"]}


def rows(*bodies):
    return [{"body": json.dumps(body).encode()} for body in bodies]


def test_call_metrics_count_images_stages_outcomes_and_reasons(core):
    batch = core.run(
        core.parse(
            rows(
                {"prompt": "a", "num_images_per_prompt": 2},
                {"prompt": "b", "width": 7},
                {"prompt": "c", "num_inference_steps": 30, "timeout_s": 0.05},
            )
        )
    )
    core.render(batch)
    observations = call_metrics(batch.size, batch.ended, gpu_memory_bytes=123)

    def values(spec, **labels):
        return [
            o.value for o in observations if o.spec == spec and all(o.labels.get(k) == v for k, v in labels.items())
        ]

    assert values(BATCH) == [3]
    assert values(IMAGES) == [2]
    assert len(values(LATENCY, Steps="4")) == 1 and values(LATENCY, Steps="4")[0] > 0
    assert {o.labels["Stage"] for o in observations if o.spec == STAGE} == {
        "text_encoding",
        "denoising",
        "vae_decode",
        "image_encoding",
    }
    assert values(REJECTED, Reason="InvalidRequest") == [1]
    assert values(REJECTED, Reason="TimeBudgetExceeded") == [1]
    assert (
        values(REQUESTS, Outcome="ok"),
        values(REQUESTS, Outcome="client_error"),
        values(REQUESTS, Outcome="server_error"),
    ) == ([1], [1], [1])
    assert [o.value for o in observations if o.spec.name == "sdxl_gpu_memory_allocated_bytes"] == [123]


def test_a_streamed_request_failing_mid_stream_counts_as_an_error(core):
    # The first step's chunk goes out (HTTP 200 committed); the client is slow to take it, so the 2 s budget runs
    # out before the second step, whatever the machine's speed.
    batch = core.run(
        core.parse(rows({"prompt": "x", "stream": True, "num_inference_steps": 40, "timeout_s": 2.0})),
        emit=lambda chunks: time.sleep(2.1),
    )
    replies = core.render(batch)
    assert replies[0].status == 200
    reasons = [o.labels["Reason"] for o in core.metrics(batch, replies) if o.spec == REJECTED]
    assert reasons == ["TimeBudgetExceeded"]
