"""The handler's metrics on a real TorchServe /metrics endpoint (prometheus mode, shipped metrics config)."""

from __future__ import annotations

import re
import time

import requests


def scrape(server, wanted: list[str], timeout: float = 20) -> str:
    """/metrics once every wanted series is there (the frontend parses worker metrics asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        text = requests.get(f"{server.metrics_url}/metrics", timeout=10).text
        if all(re.search(pattern, text, re.M) for pattern in wanted) or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


def value(text: str, pattern: str) -> float:
    match = re.search(pattern + r"\S* (\S+)$", text, re.M)
    assert match, f"no series matching {pattern!r} in /metrics:\n{text[:3000]}"
    return float(match.group(1))


def test_handler_metrics_reach_prometheus_after_real_requests(server):
    for body in (
        {"prompt": "m1", "num_inference_steps": 3, "num_images_per_prompt": 2},
        {"prompt": "m2", "width": 7},
        {"prompt": "m3", "num_inference_steps": 30, "timeout_s": 0.05},
    ):
        server.predict(body)
    wanted = [
        r'^sdxl_generation_latency_seconds_bucket\{.*Steps="3"',
        r'^sdxl_stage_seconds_count\{.*Stage="denoising"',
        r"^sdxl_images_generated_total",
        r'^sdxl_requests_rejected_total\{.*Reason="InvalidRequest"',
        r'^sdxl_requests_rejected_total\{.*Reason="TimeBudgetExceeded"',
        r'^sdxl_requests_total\{.*Outcome="ok"',
        r"^sdxl_executed_batch_size_count",
    ]
    text = scrape(server, wanted)
    for pattern in wanted:
        assert re.search(pattern, text, re.M), f"{pattern!r} missing from /metrics:\n{text[:3000]}"
    assert value(text, r'^sdxl_generation_latency_seconds_count\{.*Steps="3"') >= 1
    assert value(text, r"^sdxl_images_generated_total") >= 2
    assert 'ModelName="stable-diffusion-xl"' in text
    # TorchServe's own metrics are still there.
    assert re.search(r"^ts_inference_requests_total", text, re.M)
