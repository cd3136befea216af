"""The async job API against a real Redis and a real TorchServe (tiny model): gateway and dispatchers as
processes, started and stopped here."""

from __future__ import annotations

import base64

import pytest

from tests.integration.jobs_stack import JobStack


@pytest.fixture(scope="module")
def stack(tmp_path_factory, server):
    stack = JobStack(tmp_path_factory.mktemp("jobs"), server).start()
    yield stack
    stack.stop()


def test_a_job_streams_its_progress_and_its_image_equals_the_synchronous_one(stack, server):
    body = {"prompt": "a lighthouse at dawn", "seed": 7, "num_inference_steps": 4}
    response = stack.submit(body)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["Location"] == f"/jobs/{job['job_id']}"
    assert job["status"] == "pending" and job["total_steps"] == 4
    events = stack.events(job["job_id"])
    statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
    assert statuses == ["pending", "processing", "completed"], events
    steps = [e["data"]["step"] for e in events if e["event"] == "progress"]
    assert steps == [1, 2, 3, 4]
    finished = stack.job(job["job_id"])
    assert finished["status"] == "completed" and finished["seed"] == 7 and finished["attempt"] == 1
    assert finished["progress"] == 1.0 and finished["parameters"]["prompt"] == body["prompt"]
    image = stack.image(job["job_id"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    direct = server.predict(body).json()
    assert image.content == base64.b64decode(direct["images"][0])
