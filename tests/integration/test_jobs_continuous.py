"""Canceling a running job on a continuous-batching TorchServe: the dispatcher closes its stream, TorchServe
drops the request at its next chunk and the handler frees it (its `disconnected` outcome on /metrics)."""

from __future__ import annotations

import re
import time

import requests

from tests.integration.jobs_stack import JobStack


def disconnected(server) -> float:
    text = requests.get(f"{server.metrics_url}/metrics", timeout=10).text
    match = re.search(r'^sdxl_requests_total\{.*Outcome="disconnected".*\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_canceling_a_running_job_frees_it_in_the_handler(tmp_path, continuous_server):
    stack = JobStack(tmp_path, continuous_server).start()
    try:
        before = disconnected(continuous_server)
        job_id = stack.submit(
            # 50 steps at 256 px take ~10 s here: the cancel (SAQ polls aborts every second) lands mid-loop
            {"prompt": "canceled mid-loop", "num_inference_steps": 50, "width": 256, "height": 256}
        ).json()["job_id"]
        stack.wait_step(job_id, 2)
        canceled = requests.delete(f"{stack.gateway.url}/jobs/{job_id}", headers=stack.headers(), timeout=10)
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
        time.sleep(1.5)  # SAQ's abort check runs every second; then the dispatcher closes the stream
        # The handler learns of the closed stream at its next call, when the request's id stops coming.
        after = stack.submit({"prompt": "next", "seed": 2}).json()["job_id"]
        assert stack.wait(after)["status"] == "completed"
        assert stack.job(after)["parameters"] is not None
        deadline = time.monotonic() + 20
        while disconnected(continuous_server) == before and time.monotonic() < deadline:
            time.sleep(0.3)
        assert disconnected(continuous_server) == before + 1, "the handler dropped the canceled request"
        job = stack.job(job_id)
        assert job["status"] == "canceled" and job["image_url"] is None and stack.image(job_id).status_code == 409
        assert job["step"] < 50
        assert stack.depth() == (0, 0)
    finally:
        stack.stop()
