import json

import pytest
import torch

from handler.contract.errors import InvalidRequest, OutOfMemory, ResponseTooLarge
from handler.wire.replies import error_reply


@pytest.mark.parametrize(
    ("exc", "status", "kind"),
    [
        (InvalidRequest("bad", field="width", value=3), 400, "InvalidRequest"),
        (ResponseTooLarge("too big"), 507, "ResponseTooLarge"),
        (OutOfMemory("oom"), 507, "OutOfMemory"),
        (MemoryError("cannot allocate"), 507, "OutOfMemory"),
        (torch.OutOfMemoryError("CUDA out of memory"), 507, "OutOfMemory"),
        (RuntimeError("boom"), 500, "ServingError"),
        (ValueError("odd"), 500, "ServingError"),
    ],
)
def test_every_exception_maps_to_one_status_and_json_body(exc, status, kind):
    reply = error_reply(exc)
    error = json.loads(reply.body)["error"]
    assert reply.status == status == error["code"]
    assert error["type"] == kind
    assert reply.content_type == "application/json"
    assert str(exc) in error["message"]
    assert (reply.error, reply.code, reply.outcome) == (
        kind,
        status,
        "client_error" if status < 500 else "server_error",
    )


def test_invalid_request_echoes_field_and_value():
    error = error_reply(InvalidRequest("`width` must be divisible by 8 but is 1004", field="width", value=1004))
    assert json.loads(error.body)["error"] == {
        "code": 400,
        "type": "InvalidRequest",
        "message": "`width` must be divisible by 8 but is 1004",
        "field": "width",
        "value": 1004,
    }


def test_echoed_values_are_short_and_json_safe():
    long_prompt = error_reply(InvalidRequest("too long", field="prompt", value="x" * 5000))
    assert len(json.loads(long_prompt.body)["error"]["value"]) == 80
    nan = error_reply(InvalidRequest("nan", field="guidance_scale", value=float("nan")))
    assert json.loads(nan.body)["error"]["value"] == "nan"
