"""The handler's metrics on a real TorchServe /metrics endpoint (prometheus mode, shipped metrics config)."""

from __future__ import annotations

import re

from tests.helpers import LORA_SERIES, scrape, value


def test_handler_metrics_reach_prometheus_after_real_requests(server):
    for body in (
        {"prompt": "m1", "num_inference_steps": 3, "num_images_per_prompt": 2},
        {"prompt": "m2", "width": 7},
        {"prompt": "m3", "num_inference_steps": 30, "timeout_s": 0.05},
    ):
        server.predict(body)
    wanted = [
        r'^sdxl_generation_latency_dekaseconds_bucket\{.*Steps="3"',
        r'^sdxl_stage_dekaseconds_count\{.*Stage="denoising"',
        r"^sdxl_images_generated_total",
        r'^sdxl_requests_rejected_total\{.*Reason="InvalidRequest"',
        r'^sdxl_requests_rejected_total\{.*Reason="TimeBudgetExceeded"',
        r'^sdxl_requests_total\{.*Outcome="ok"',
        r"^sdxl_executed_batch_size_count",
    ]
    text = scrape(server, wanted)
    for pattern in wanted:
        assert re.search(pattern, text, re.M), f"{pattern!r} missing from /metrics:\n{text[:3000]}"
    assert value(text, r'^sdxl_generation_latency_dekaseconds_count\{.*Steps="3"') >= 1
    assert value(text, r"^sdxl_images_generated_total") >= 2
    assert 'ModelName="stable-diffusion-xl"' in text
    # TorchServe's own metrics are still there.
    assert re.search(r"^ts_inference_requests_total", text, re.M)


def test_dashboard_and_alert_queries_name_series_the_server_really_exports(server):
    from tests.helpers import alert_rules, dashboard_exprs, referenced_metrics

    server.predict({"prompt": "dashboard", "num_inference_steps": 2})
    server.predict({"prompt": "dashboard", "width": 9})
    server.predict({"prompt": "dashboard", "num_inference_steps": 2, "deadline_s": 600})  # sdxl_deadlines_total
    used = set().union(*(referenced_metrics(e) for e in dashboard_exprs() + [r["expr"] for r in alert_rules()]))
    # GPU series exist only where there is a GPU, LoRA series only with a catalogue (tests/integration/
    # test_loras.py scrapes those); everything else must be on this CPU server's /metrics.
    cpu_visible = {name for name in used if not name.startswith((*LORA_SERIES, "GPU", "sdxl_gpu_"))}
    text = scrape(server, [rf"^{name}\b" for name in cpu_visible])
    missing = {name for name in cpu_visible if not re.search(rf"^{name}\b", text, re.M)}
    assert not missing, f"queried but not exported: {missing}"
