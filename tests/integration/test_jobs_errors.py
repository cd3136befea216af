"""Every TorchServe error answer we can provoke becomes a clean job error (type, code, message; never a traceback
or a server path), through a real dispatcher on a real TorchServe: the frontend's flat bodies (400 key, 404
model, 413, 503) and the handler's own (507)."""

from __future__ import annotations

import json
import re

import pytest
import requests
import yaml

from scripts.torchserve_control import REPO_ROOT
from tests.images import b64, picture
from tests.integration.conftest import server_with_model_yaml
from tests.integration.jobs_stack import JobStack


@pytest.fixture(scope="module")
def odd_server(tmp_path_factory):
    """Its own TorchServe: request bodies over 4,096 bytes get TorchServe's 413; the handler refuses replies over
    2,000 bytes (507, as it does for any reply over max_response_bytes)."""
    handler = yaml.safe_load((REPO_ROOT / "config" / "tiny-sdxl.yaml").read_text())["handler"]
    server = server_with_model_yaml(
        tmp_path_factory.mktemp("odd"),
        properties={"max_request_size": "4096"},
        handler={**handler, "max_response_bytes": 2000},
    )
    yield server
    server.stop()


def job_error(folder, server, body: dict, **settings) -> dict:
    """Run one job through its own stack (Redis, gateway, one dispatcher) with ``settings``; its error."""
    stack = JobStack(folder, server, settings=settings).start()
    try:
        response = stack.submit(body)
        assert response.status_code == 202, response.text
        job = stack.wait(response.json()["job_id"], timeout=180)
    finally:
        stack.stop()
    assert job["status"] == "failed", job
    return job["error"]


def assert_clean(error: dict, code: int, kind: str, words: str) -> None:
    assert error["code"] == code and error["type"] == kind, error
    assert words in error["message"], error
    text = json.dumps(error)
    assert "Traceback" not in text and not re.search(r"/\w+/\w+", text), error


def test_a_rejected_key_that_cannot_be_renewed_is_a_clean_400(tmp_path, server):
    key_file = tmp_path / "key_file.json"  # keys TorchServe never made: the API key is refused too
    key_file.write_text(json.dumps({name: {"key": "not-a-key"} for name in ("inference", "management", "API")}))
    error = job_error(
        tmp_path / "stack",
        server,
        {"prompt": "a key", "num_inference_steps": 2},
        torchserve_key_file=str(key_file),
        attempts=1,
    )
    assert_clean(error, 400, "InvalidKeyException", "Token Authorization failed")


def test_an_unknown_model_is_a_clean_404(tmp_path, server):
    error = job_error(tmp_path, server, {"prompt": "a model", "num_inference_steps": 2}, model_name="no-such-model")
    assert_clean(error, 404, "ModelNotFoundException", "no-such-model")


def test_a_body_over_torchserves_limit_is_a_clean_413(tmp_path, odd_server):
    body = {"prompt": "an image", "image": b64(picture(64, 64, seed=3)), "strength": 0.5, "num_inference_steps": 2}
    assert len(json.dumps(body)) > 4096
    error = job_error(tmp_path, odd_server, body)
    assert error["code"] == 413, error
    assert_clean(error, 413, error["type"], "")


def test_a_reply_over_the_handlers_limit_is_a_clean_507(tmp_path, odd_server):
    error = job_error(tmp_path, odd_server, {"prompt": "too big", "num_inference_steps": 2})
    assert_clean(error, 507, "ResponseTooLarge", "2000")


def test_no_worker_is_a_clean_503_once_the_attempts_are_spent(tmp_path, odd_server):
    """Last in this module: it takes the model's workers away."""
    scaled = odd_server.token_keys.call(
        lambda auth: requests.put(
            f"{odd_server.management_url}/models/stable-diffusion-xl",
            params={"min_worker": 0, "max_worker": 0, "synchronous": "true"},
            headers=auth,
            timeout=60,
        ),
        lambda answer: answer.status_code == 400,
        "management",
    )
    assert scaled.status_code == 200, scaled.text
    error = job_error(tmp_path, odd_server, {"prompt": "no worker", "num_inference_steps": 2}, attempts=2)
    assert_clean(error, 503, "ServiceUnavailableException", "")
