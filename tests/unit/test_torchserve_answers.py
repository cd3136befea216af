"""jobs.torchserve_answers.torchserve_error: each body shape TorchServe sends becomes a clean job error. The same errors
provoked on a real TorchServe through a real dispatcher: tests/integration/test_jobs_errors.py."""

from __future__ import annotations

import json

import pytest

from jobs.torchserve_answers import torchserve_error

FRONTEND = '{\n  "code": 404,\n  "type": "ModelNotFoundException",\n  "message": "Model not found: nope"\n}\n'
HANDLER = json.dumps({"error": {"code": 400, "type": "InvalidRequest", "message": "`width` ...", "field": "width"}})
STREAM_EVENT = json.dumps({"event": "error", "code": 507, "type": "ResponseTooLarge", "message": "reply too big"})


@pytest.mark.parametrize(
    ("status", "text", "expected"),
    [
        (404, FRONTEND, {"code": 404, "type": "ModelNotFoundException", "message": "Model not found: nope"}),
        (400, HANDLER, {"code": 400, "type": "InvalidRequest", "message": "`width` ...", "field": "width"}),
        (507, STREAM_EVENT, {"code": 507, "type": "ResponseTooLarge", "message": "reply too big"}),
        (502, "<html><body>Bad Gateway</body></html>", {"code": 502, "type": "TorchServeError"}),
        (500, "", {"code": 500, "type": "TorchServeError", "message": "TorchServe answered 500"}),
    ],
)
def test_every_body_shape_becomes_a_job_error(status, text, expected):
    error = torchserve_error(status, text)
    assert {k: error[k] for k in expected} == expected


def test_no_traceback_and_no_server_path_reaches_the_client():
    message = (
        "generation failed: FileNotFoundError: /opt/sdxl-torchserve/handler/x.py missing\n"
        'Traceback (most recent call last):\n  File "/usr/lib/python3.11/site-packages/ts/service.py", line 1'
    )
    error = torchserve_error(500, json.dumps({"error": {"code": 500, "type": "ServingError", "message": message}}))
    assert error["message"] == "generation failed: FileNotFoundError: <path> missing"
