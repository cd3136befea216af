"""Dispatchers that die or are told to stop, against a real Redis and a real TorchServe."""

from __future__ import annotations

import base64
import signal

import pytest

from tests.images import max_pixel_difference
from tests.integration.jobs_stack import JobStack

# ~5 s on 2 vCPUs (tiny model, 0.11 s a step at 128 px): longer than the 2 s drain grace.
LONG = {"prompt": "a long job", "seed": 21, "num_inference_steps": 50, "width": 128, "height": 128}


@pytest.fixture
def stack(tmp_path, server):
    """Fast failure detection: a silent dispatcher's job is swept after 2 s; SIGTERM grants 2 s."""
    settings = {"heartbeat_s": 2, "sweep_s": 1, "drain_grace_s": 2}
    stack = JobStack(tmp_path, server, settings=settings).start(dispatchers=0)
    yield stack
    stack.stop()


def test_a_job_whose_dispatcher_is_killed_completes_on_another_with_attempt_2(stack, server):
    first = stack.add_dispatcher()
    job_id = stack.submit(LONG).json()["job_id"]
    assert stack.wait_step(job_id, 3)["attempt"] == 1
    first.signal(signal.SIGKILL)
    first.process.wait(10)
    stack.add_dispatcher()
    job = stack.wait(job_id, timeout=180)
    assert job["status"] == "completed" and job["attempt"] == 2, (job, stack.logs())
    statuses = [e["data"]["status"] for e in stack.events(job_id) if e["event"] == "status"]
    assert statuses == ["pending", "processing", "pending", "processing", "completed"]
    direct = base64.b64decode(server.predict(LONG).json()["images"][0])
    assert stack.image(job_id).content == direct or max_pixel_difference(stack.image(job_id).content, direct) <= 1


def test_sigterm_finishes_what_fits_the_grace_and_puts_the_rest_back_at_the_head(stack):
    draining = stack.add_dispatcher()
    # In flight at SIGTERM, 3 steps (~0.3 s idle, ~1.3 s on a loaded 2-core machine) left: it fits the 2 s grace.
    short = stack.submit({"prompt": "fits", "num_inference_steps": 20, "width": 128, "height": 128}).json()["job_id"]
    stack.wait_step(short, 17)
    draining.signal(signal.SIGTERM)
    later = stack.submit({"prompt": "submitted during the drain"}).json()["job_id"]
    assert draining.process.wait(30) == 0, draining.log_tail()
    assert stack.job(short)["status"] == "completed" and stack.job(short)["attempt"] == 1
    assert stack.job(later)["status"] == "pending" and stack.job(later)["attempt"] == 0, "no new jobs once draining"

    draining = stack.add_dispatcher()
    assert stack.wait(later)["status"] == "completed"
    long = stack.submit(LONG).json()["job_id"]
    started = stack.wait_step(long, 1)
    draining.signal(signal.SIGTERM)
    assert draining.process.wait(30) == 0, draining.log_tail()
    back = stack.job(long)
    assert back["status"] == "pending" and back["queue_position"] == 0 and back["attempt"] == 1, back
    behind = stack.submit({"prompt": "behind"}).json()["job_id"]
    assert stack.job(behind)["queue_position"] == 1, "the returned job is at the head"
    stack.add_dispatcher()
    assert stack.wait(long, timeout=180)["attempt"] == 2
    run_s = _moment(stack.job(long)["finished_at"]) - _moment(stack.job(long)["started_at"])
    assert run_s > 2, f"the job must outlast the grace to test it (ran {run_s:.1f} s; started {started})"
    assert stack.wait(behind)["status"] == "completed"


def _moment(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
