"""Stopping TorchServe with requests in flight: bare ``torchserve --stop`` drops them; scripts/drain.py
(the Kubernetes preStop hook) answers every one of them first."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from scripts.torchserve_control import REPO_ROOT
from tests.integration.conftest import start_server


def send_load(server, count: int):
    pool = ThreadPoolExecutor(count)

    def send(i):
        try:
            # 50 steps at 128 px: seconds per batch of 4 on any CPU, so the stop 1 s in lands mid-batch (25 steps
            # at 64 px finished a batch within that second on an idle machine).
            body = {"prompt": f"in flight {i}", "num_inference_steps": 50, "width": 128, "height": 128, "seed": i}
            return server.predict(body, timeout=300)
        except requests.ConnectionError as exc:
            return exc

    return pool, [pool.submit(send, i) for i in range(count)]


def test_bare_stop_drops_requests_in_flight(tmp_path, model_store):
    server = start_server(tmp_path, model_store)
    pool, futures = send_load(server, 6)
    time.sleep(1.0)
    server.stop()
    outcomes = [f.result() for f in futures]
    pool.shutdown()
    assert all(isinstance(o, requests.ConnectionError) for o in outcomes), outcomes


def test_drain_answers_every_request_in_flight_then_stops(tmp_path, model_store):
    server = start_server(tmp_path, model_store)
    pool, futures = send_load(server, 6)
    time.sleep(1.0)
    try:
        drain = subprocess.run(
            [sys.executable, str(REPO_ROOT / "scripts" / "drain.py"), "--endpoint-grace", "0",
             "--management-url", server.management_url, "--key-file", str(server.workdir / "key_file.json")],
            cwd=server.workdir, env=server.env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    finally:
        outcomes = [f.result() for f in futures]
        pool.shutdown()
        server.stop()
    assert drain.returncode == 0 and "all requests answered" in drain.stdout, drain.stdout + drain.stderr
    assert [getattr(o, "status_code", o) for o in outcomes] == [200] * 6
    assert [o.json()["seeds"] for o in outcomes] == [[i] for i in range(6)]
    try:
        requests.get(f"{server.inference_url}/ping", timeout=5)
        stopped = False
    except requests.ConnectionError:
        stopped = True
    assert stopped, "TorchServe still answers after the drain"
