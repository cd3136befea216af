"""The S3 result store over real HTTP, against moto's S3-API server in its own process.

What this checks: our boto3 calls, object keys, content types and the presigned-URL redirect, over the wire.
What it does not: moto accepts any credentials and any signature (even a tampered presigned URL), so
authentication and URL expiry are not tested here (../shared/async-jobs-facts.md).
"""

from __future__ import annotations

import base64
import subprocess
import time

import pytest
import requests

from scripts.torchserve_control import free_port, tool
from tests.integration.jobs_stack import JobStack

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test-key",
    "AWS_SECRET_ACCESS_KEY": "test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def s3_endpoint(tmp_path):
    port = free_port()
    with open(tmp_path / "moto.log", "wb") as log:
        process = subprocess.Popen([tool("moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(endpoint, timeout=1)
            break
        except requests.RequestException:
            time.sleep(0.2)
    yield endpoint
    process.terminate()
    process.wait(10)


def test_results_go_to_s3_and_the_image_url_redirects_to_a_presigned_object(tmp_path, server, s3_endpoint, monkeypatch):
    import boto3

    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="sdxl-results")
    settings = {"result_store": "s3", "s3_bucket": "sdxl-results", "s3_endpoint_url": s3_endpoint, "s3_prefix": "jobs/"}
    stack = JobStack(tmp_path / "stack", server, settings=settings, env=CREDENTIALS).start()
    try:
        body = {"prompt": "stored in a bucket", "seed": 3}
        job_id = stack.submit(body).json()["job_id"]
        assert stack.wait(job_id)["status"] == "completed", stack.logs()
        stored = s3.get_object(Bucket="sdxl-results", Key=f"jobs/{job_id}/0.png")
        assert stored["ContentType"] == "image/png"
        redirect = requests.get(
            f"{stack.gateway.url}/jobs/{job_id}/image", headers=stack.headers(), allow_redirects=False, timeout=10
        )
        assert redirect.status_code == 307
        location = redirect.headers["location"]
        assert location.startswith(f"{s3_endpoint}/sdxl-results/jobs/{job_id}/0.png?") and "X-Amz-Signature" in location
        image = requests.get(location, timeout=10)  # no API key: the URL itself grants it
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert image.content == stored["Body"].read()
        direct = server.predict(body).json()["images"][0]
        assert image.content == base64.b64decode(direct)
    finally:
        stack.stop()
