"""The Triton adapter's tensor mapping (handler.adapters.triton_io), without Triton: rows in, outputs or errors out."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from handler.adapters.triton_io import OUTPUTS, TritonFailure, request_row, serve
from handler.contract.errors import InvalidRequest
from handler.runtime.core import Core


def strings(*values: str) -> np.ndarray:
    return np.array([[value.encode() for value in values]], dtype=object)


def test_inputs_make_one_json_body_with_steps_as_num_inference_steps():
    row = request_row(strings("a cat"), np.array([[7]], dtype=np.int32), strings('{"seed": 3, "width": 96}'))
    assert json.loads(row["body"]) == {"seed": 3, "width": 96, "prompt": "a cat", "num_inference_steps": 7}
    assert json.loads(request_row(strings("a"))["body"]) == {"prompt": "a"}


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ('{"prompt": "again"}', "prompt"),
        ('{"num_inference_steps": 3}', "num_inference_steps"),
        ('{"stream": true}', "stream"),
        ('{"response_format": "image"}', "response_format"),
        ('{"num_images_per_prompt": 2}', "num_images_per_prompt"),
        ("[1, 2]", "parameters"),
    ],
)
def test_inputs_that_cannot_make_a_request_name_the_field(parameters, field):
    with pytest.raises(InvalidRequest) as raised:
        request_row(strings("a"), np.array([[2]], dtype=np.int32), strings(parameters))
    assert raised.value.field == field


def test_a_batch_gets_outputs_for_good_requests_and_its_own_error_for_a_bad_one(tiny_loaded, tiny_settings):
    core = Core(tiny_loaded, tiny_settings, keep_images=True)  # as build_core makes Triton's
    results = serve(
        core,
        [
            {"prompt": strings("good"), "steps": np.array([[2]], dtype=np.int32)},
            {"prompt": strings("bad"), "parameters": strings('{"width": 65}')},
            {"prompt": strings("refused"), "parameters": strings('{"stream": true}')},
            {"prompt": strings("good too"), "parameters": strings('{"seed": 5, "num_inference_steps": 1}')},
        ],
    )
    good, bad, refused, also_good = results
    assert set(good) == set(OUTPUTS) and good["image"].shape == (1, 64, 64, 3) and good["image"].dtype == np.uint8
    assert good["image_bytes"][0][0].startswith(b"\x89PNG") and also_good["seed"][0][0] == 5
    # the pixels are the decoded image itself, the PNG its lossless encoding
    png = np.asarray(Image.open(io.BytesIO(good["image_bytes"][0][0])).convert("RGB"))
    assert np.array_equal(good["image"][0], png)
    core.close()
    assert json.loads(good["batch"][0][0])["requests"] == 3  # the refused one never reached the core
    for failure, field in ((bad, "width"), (refused, "stream")):
        assert isinstance(failure, TritonFailure) and failure.code == "INVALID_ARG"
        assert json.loads(failure.message)["field"] == field
