"""Every shipped monitoring query evaluated by a real Prometheus scraping a real TorchServe with known traffic.

Prometheus scrapes the test server every second (with the pod labels Kubernetes would add) and loads the alert
rules. The traffic: one first request per step count, then 6 good requests (8 images), 2 streamed, 4 rejected
(400) and 2 that run out of their time budget (504). Each query must parse; each that a CPU server can produce
must return what that traffic implies. Run with ``-s`` to see every expression and its value.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from scripts.monitoring_check import Prometheus, print_report, report, shipped_queries
from scripts.torchserve_control import free_port
from tests.integration.conftest import start_server

GOOD = [{"prompt": f"good {n}", "seed": n, "num_inference_steps": 2 + n % 2, "num_images_per_prompt": 1 + n % 3 // 2}
        for n in range(6)]  # fmt: skip
STREAMED = [{"prompt": f"streamed {n}", "stream": True, "num_inference_steps": 3} for n in range(2)]
BAD = [{"prompt": "bad", "width": 7}, {"prompt": "bad", "steps": 3}, {"prompt": ""}, {"prompt": "x", "seed": -1}]
LATE = [{"prompt": "late", "num_inference_steps": 50, "timeout_s": 0.05} for _ in range(2)]
WARM = (2, 3)  # one request per step count before the traffic
GPU_ONLY = {"GPUUtilization", "GPUMemoryUtilization", "sdxl_gpu_memory_allocated_bytes"}


@pytest.fixture(scope="module")
def monitored(tmp_path_factory, model_store):
    """A fresh TorchServe (counters from zero; system metrics every 5 s) and a Prometheus scraping it."""
    server = start_server(tmp_path_factory.mktemp("monitored"), model_store, metric_time_interval="5")
    prometheus = Prometheus(tmp_path_factory.mktemp("prometheus"), [server.metrics_url.split("//")[1]], free_port())
    try:
        prometheus.start()
        yield server, prometheus
    finally:
        prometheus.stop()
        server.stop()


def wait_for(prometheus: Prometheus, expr: str, expected: float, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while True:
        values = list(prometheus.values(expr).values())
        if (values and values[0] == expected) or time.monotonic() > deadline:
            return values[0] if values else None
        time.sleep(0.5)


def drive(server) -> None:
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda body: server.predict(body).status_code, GOOD + BAD + LATE))
        streamed = list(pool.map(lambda body: server.predict(body, stream=True).content, STREAMED))
    assert statuses == [200] * len(GOOD) + [400] * len(BAD) + [504] * len(LATE)
    assert all(b'"event":"result"' in body for body in streamed)


def test_every_shipped_query_parses_and_reads_what_the_traffic_implies(monitored):
    server, prometheus = monitored
    # 1. Before any request, every outcome series is already scraped at 0: the first burst is then a rise.
    outcome = 'sum by (Outcome) (sdxl_requests_total{Outcome="%s"})'
    for name in ("ok", "client_error", "server_error", "disconnected"):
        assert wait_for(prometheus, outcome % name, 0) == 0, f"no zero {name} series at startup"
    assert wait_for(prometheus, 'sum(sdxl_requests_rejected_total{Reason="InvalidRequest"})', 0) == 0
    # Histogram series (latency by Steps, time by Stage) appear with their first observation: one request per
    # step count first, so that rate() over them sees the traffic below as a rise, however fast it is.
    for steps in WARM:
        assert server.predict({"prompt": "first", "num_inference_steps": steps}).status_code == 200
    assert wait_for(prometheus, outcome % "ok", len(WARM)) == len(WARM)
    time.sleep(3)  # a few scrapes before the traffic

    # 2. Known traffic, then scrapes until the counters show all of it.
    drive(server)
    ok = len(WARM) + len(GOOD) + len(STREAMED)
    assert wait_for(prometheus, outcome % "ok", ok) == ok
    assert wait_for(prometheus, outcome % "client_error", len(BAD)) == len(BAD)
    assert wait_for(prometheus, outcome % "server_error", len(LATE)) == len(LATE)
    assert wait_for(prometheus, "sum(sdxl_images_generated_total)", 12) == 12  # 2 first, 8 good, 2 streamed
    time.sleep(6)  # system metrics (every 5 s) and a few more scrapes for rate()

    # 3. Every shipped expression.
    rows = report(prometheus, shipped_queries())
    print()
    print_report(rows)
    if os.environ.get("SDXL_MONITORING_REPORT"):
        with open(os.environ["SDXL_MONITORING_REPORT"], "w") as out:
            json.dump(rows, out, indent=1)
    failed = [(row["name"], row["error"]) for row in rows if row["error"]]
    assert not failed, f"queries Prometheus rejects: {failed}"
    got = {(row["source"], row["name"]): row["values"] for row in rows}

    def only(source: str, name: str) -> float:
        values = got[(source, name)]
        assert len(values) == 1, f"{name}: {values}"
        return next(iter(values.values()))

    # The rejected requests are counted from the first one (the series was there at 0 before them).
    rejected = prometheus.values('sum(increase(sdxl_requests_total{Outcome="client_error"}[2m]))')
    assert next(iter(rejected.values())) >= len(BAD) - 0.5
    by_outcome = got[("dashboard", "Requests by outcome (/s) [{{Outcome}}]")]
    assert {labels: value > 0 for labels, value in by_outcome.items()} == {
        '{Outcome="ok"}': True,
        '{Outcome="client_error"}': True,
        '{Outcome="server_error"}': True,
        '{Outcome="disconnected"}': False,
    }
    # 2 server errors in 16 requests (rates extrapolate each series on its own: not exactly 1/8).
    assert 0.05 < only("dashboard", "Error rate (server errors / all) [error rate]") < 0.3
    assert got[("alert", "SDXLErrorRateHigh")], "12.5 % server errors: the alert expression must return a series"
    reasons = got[("dashboard", "Rejections by reason (/s) [{{Reason}}]")]
    assert {labels for labels, value in reasons.items() if value > 0} == {
        '{Reason="InvalidRequest"}',
        '{Reason="TimeBudgetExceeded"}',
    }
    for quantile in ("p50", "p95", "p99"):
        assert 0 < only("dashboard", f"Latency p50 / p95 / p99 (s, handler) [{quantile}]") < 30
    by_steps = got[("dashboard", "p99 latency by step count (s) [{{Steps}} steps]")]
    assert set(by_steps) == {'{Steps="2"}', '{Steps="3"}'}
    assert only("dashboard", "Images / s [images/s]") > 0
    stages = got[("dashboard", "Median time per stage (s) [{{Stage}}]")]
    assert {s.split('"')[1] for s in stages} == {"text_encoding", "denoising", "vae_decode", "image_encoding"}
    assert all(value > 0 for value in stages.values())
    assert only("dashboard", "Mean executed batch size [requests per handler call]") >= 1
    assert 0 < only("dashboard", "Host memory used (%) [{{Hostname}}]") < 100
    queue = got[("dashboard", "Queue depth (requests waiting, Little's law) [{{pod}}]")]
    assert list(queue) == ['{pod="sdxl-torchserve-0"}'] and queue['{pod="sdxl-torchserve-0"}'] >= 0
    assert only("keda", "prometheus") >= 0
    assert got[("adapter", "sdxl_queue_depth (seriesQuery)")], "the adapter finds no series to serve"
    assert list(got[("adapter", "sdxl_queue_depth (metricsQuery)")]) == ['{pod="sdxl-torchserve-0"}']
    # Healthy on every other count: no latency, queue or memory alert on this traffic.
    for alert in ("SDXLLatencyP99High", "SDXLQueueDepthHigh", "SDXLHostMemoryHigh"):
        assert got[("alert", alert)] == {}, alert
    # GPU series exist only on a GPU: their queries parse and return nothing here.
    gpu_queries = [row for row in rows if any(name in row["expr"] for name in GPU_ONLY)]
    assert len(gpu_queries) == 6 and all(row["values"] == {} for row in gpu_queries)
