"""Canceling running jobs under static batching, on a real TorchServe: TorchServe computes a static batch to its
end whatever the client does, so the dispatcher holds a canceled job's slot until then. A cancel storm therefore
costs the batch that was running and nothing more, and another key's job waits behind that batch only."""

from __future__ import annotations

import time

from tests.integration.jobs_stack import JobStack, requests_answered

LONG = {"num_inference_steps": 50, "width": 128, "height": 128}  # a batch of 4 takes ~10 s or more on 2 vCPUs


def test_a_cancel_storm_under_static_batching_computes_only_the_batch_that_was_running(tmp_path, server):
    stack = JobStack(tmp_path, server).start()  # one dispatcher, 4 slots (batchSize 4 x 1 worker)
    try:
        stack.wait(stack.submit({"prompt": "warm", "num_inference_steps": 2}).json()["job_id"])
        answered_before = requests_answered(server, at_least=1)  # the warm job, counted (this module's server)
        storm = [stack.submit({"prompt": f"storm {i}", "seed": i, **LONG}).json()["job_id"] for i in range(24)]
        deadline = time.monotonic() + 120
        while sum(stack.job(job_id)["status"] == "processing" for job_id in storm[:4]) < 4:
            assert time.monotonic() < deadline, stack.logs()
            time.sleep(0.1)
        # The storm: every job canceled in order, one every 0.1 s (running ones first). A dispatcher that freed a
        # canceled job's slot at once took the next pending ones to TorchServe before their cancel came.
        for job_id in storm:
            assert stack.cancel(job_id).status_code == 200
            time.sleep(0.1)
        other = stack.submit({"prompt": "another key", "seed": 5, "num_inference_steps": 1}, key="other")
        assert stack.wait(other.json()["job_id"], key="other", timeout=300)["status"] == "completed"
        computed = requests_answered(server, at_least=answered_before + 5) - answered_before
        assert computed == 4 + 1, f"TorchServe computed {computed} requests: the running batch and the other key's"
        assert all(stack.job(job_id)["status"] == "canceled" for job_id in storm)
        assert stack.depth() == (0, 0)
    finally:
        stack.stop()
