"""The same core on a real Triton Inference Server (Python backend, CPU, from the nvidia-pytriton wheel)."""

from __future__ import annotations

import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from scripts.triton_server import infer, start
from tests.conftest import TINY_YAML_PATH


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    server = start(tmp_path_factory.mktemp("triton"), TINY_YAML_PATH, model=None)
    yield server
    server.stop()


def while_busy(triton, calls):
    """Send ``calls`` (keyword arguments of :func:`infer`) at once while a slow request holds the model, so the
    dynamic batcher queues them and hands them to one ``execute``."""

    def send(call):
        try:
            return infer(triton.url, **call)
        except InferenceServerException as exc:
            return exc

    with ThreadPoolExecutor(len(calls) + 1) as pool:
        blocker = pool.submit(send, {"prompt": "slow", "steps": 40, "seed": 0})
        time.sleep(0.5)
        futures = [pool.submit(send, call) for call in calls]
        assert not isinstance(blocker.result(), Exception)
        return [future.result() for future in futures]


def test_the_design_documents_request_returns_a_64x64_rgb_image(triton):
    result = infer(triton.url, "A beautiful sunset over mountains", steps=4)
    assert result["image"].shape == (64, 64, 3) and result["image"].dtype == np.uint8
    assert result["image_bytes"].startswith(b"\x89PNG") and result["parameters"]["num_inference_steps"] == 4
    assert result["parameters"]["seed"] == result["seed"]


def test_concurrent_requests_arrive_in_one_execute(triton):
    results = while_busy(triton, [{"prompt": f"cat {i}", "steps": 2, "seed": i} for i in range(4)])
    sizes = [result["batch"]["requests"] for result in results]
    print(f"\nbatch sizes seen by execute(): {sizes}")
    assert max(sizes) == 4  # tiny-sdxl.yaml: batchSize 4 -> max_batch_size and preferred size 4
    assert [result["seed"] for result in results] == [0, 1, 2, 3]


def test_a_bad_request_inside_a_batch_fails_alone_and_the_server_stays_healthy(triton):
    good, bad, also_good = while_busy(
        triton,
        [
            {"prompt": "good", "steps": 2, "seed": 1},
            {"prompt": "bad", "steps": 2, "width": 65},
            {"prompt": "good too", "steps": 2, "seed": 2},
        ],
    )
    assert isinstance(bad, InferenceServerException) and bad.status() == "400"
    error = json.loads(bad.message())
    assert error["field"] == "width" and error["message"] == "`width` must be divisible by 8 but is 65"
    # The three shared one execute() (the batch's accounting is theirs alike), the bad one rejected in it.
    assert good["batch"] == also_good["batch"] and good["batch"]["requests"] >= 3 and good["batch"]["rejected"] == 1
    assert also_good["seed"] == 2
    assert triton.healthy()
    assert infer(triton.url, "after", steps=1)["image"].shape == (64, 64, 3)


def test_inputs_that_make_no_request_are_400s_naming_the_field(triton):
    cases = [
        ({"prompt": "a", "steps": 2, "num_inference_steps": 3}, "num_inference_steps"),
        ({"prompt": "a", "stream": True}, "stream"),
        ({"prompt": "a", "num_images_per_prompt": 2}, "num_images_per_prompt"),
        ({"prompt": "", "steps": 2}, "prompt"),
        ({"prompt": "a", "steps": 0}, "num_inference_steps"),
    ]
    for call, field in cases:
        with pytest.raises(InferenceServerException) as raised:
            infer(triton.url, **call)
        assert raised.value.status() == "400" and json.loads(raised.value.message())["field"] == field, call
    client = httpclient.InferenceServerClient(triton.url)
    prompt = httpclient.InferInput("prompt", [1, 1], "BYTES")
    prompt.set_data_from_numpy(np.array([[b"a"]], dtype=object))
    parameters = httpclient.InferInput("parameters", [1, 1], "BYTES")
    parameters.set_data_from_numpy(np.array([[b"[1, 2]"]], dtype=object))
    with pytest.raises(InferenceServerException, match="must be one JSON object"):
        client.infer("stable_diffusion_xl", [prompt, parameters])
    client.close()


def test_the_image_equals_torchserves_pixel_for_pixel_with_the_same_recipe(triton, server):
    body = {"prompt": "a lighthouse at dawn", "seed": 42, "num_inference_steps": 3, "guidance_scale": 6.0}
    served = server.predict(body)
    assert served.status_code == 200
    ours = infer(triton.url, body["prompt"], steps=3, seed=42, guidance_scale=6.0)
    theirs = base64.b64decode(served.json()["images"][0])
    assert ours["parameters"] == served.json()["parameters"]
    # The same pixels, bit for bit, and the same recipe but for its `Model:`, each server's own model name.
    from tests.unit.test_infotext import parse_generation_parameters

    pictures = [np.asarray(Image.open(io.BytesIO(png))) for png in (ours["image_bytes"], theirs)]
    assert np.array_equal(*pictures)
    recipes = [
        parse_generation_parameters(Image.open(io.BytesIO(png)).info["parameters"])
        for png in (ours["image_bytes"], theirs)
    ]
    assert all(recipe.pop("Model") for recipe in recipes)
    assert recipes[0] == recipes[1]
