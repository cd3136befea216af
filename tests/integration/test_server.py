"""Real HTTP against a real TorchServe serving the tiny model through our handler."""

from __future__ import annotations

import base64
import io
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests
from PIL import Image

from scripts.torchserve_control import MODEL_NAME
from tests.integration.conftest import while_worker_is_busy


def images_of(response) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in response.json()["images"]]


def concurrently(server, bodies: list) -> list[requests.Response]:
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(server.predict, bodies))


def test_readme_curl_returns_an_image(server):
    # The README's request, sent by curl itself, plus the token header the shipped config requires.
    url = f"{server.inference_url}/predictions/{MODEL_NAME}"
    result = subprocess.run(
        ["curl", "-sS", "-X", "POST", url, "-H", "Content-Type: application/json",
         "-H", f"Authorization: Bearer {server.keys()['inference']}",
         "-d", '{"prompt": "A beautiful sunset over mountains"}', "-w", "\n%{http_code}"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    body, status = result.stdout.rsplit("\n", 1)
    assert status == "200", body[:500]
    document = json.loads(body)
    image = Image.open(io.BytesIO(base64.b64decode(document["images"][0])))
    assert (image.format, image.size) == ("PNG", (64, 64))
    assert document["parameters"]["prompt"] == "A beautiful sunset over mountains"
    assert isinstance(document["seeds"][0], int)


def test_token_authorization_is_on_by_default(server):
    url = f"{server.inference_url}/predictions/{MODEL_NAME}"
    no_key = requests.post(url, json={"prompt": "x"}, timeout=30)
    wrong_key = requests.post(url, json={"prompt": "x"}, headers={"Authorization": "Bearer nope"}, timeout=30)
    management_key = requests.post(url, json={"prompt": "x"}, headers=server.headers("management"), timeout=30)
    for response in (no_key, wrong_key, management_key):
        assert response.status_code == 400
        assert response.json()["type"] == "InvalidKeyException"


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server):
    bodies = [{"prompt": f"request {i}", "seed": i} for i in range(8)]
    responses = concurrently(server, bodies)
    assert [r.status_code for r in responses] == [200] * 8
    assert [r.json()["parameters"]["prompt"] for r in responses] == [b["prompt"] for b in bodies]
    assert [r.json()["seeds"] for r in responses] == [[i] for i in range(8)]
    batch_sizes = [r.json()["batch"]["requests"] for r in responses]
    # The handler's own accounting: TorchServe delivered batches of up to batchSize=4, and at least one > 1.
    assert max(batch_sizes) > 1 and max(batch_sizes) <= 4, batch_sizes


def _while_worker_is_busy(server, bodies: list) -> list[requests.Response]:
    return while_worker_is_busy(server, [(type(server).predict, body) for body in bodies])


def test_a_bad_request_inside_a_batch_fails_alone(server):
    bodies = [
        {"prompt": "good one", "seed": 1},
        {"prompt": "bad", "width": 100},
        {"prompt": "good two", "seed": 2, "output_format": "jpeg"},
        {"prompt": "good three", "seed": 3, "width": 96},
    ]
    responses = _while_worker_is_busy(server, bodies)
    assert [r.status_code for r in responses] == [200, 400, 200, 200]
    error = responses[1].json()["error"]
    assert error["field"] == "width" and error["value"] == 100
    assert "`width` must be divisible by 8 but is 100" in error["message"]
    for response in (responses[0], responses[2], responses[3]):
        assert response.json()["batch"]["requests"] == 4
        assert response.json()["batch"]["rejected"] == 1
    assert images_of(responses[2])[0].format == "JPEG"
    assert images_of(responses[3])[0].size == (96, 64)


def test_bad_sampling_values_fail_alone_inside_a_batch_of_samplers(server):
    bodies = [
        {"prompt": "good euler_a", "seed": 1, "sampler": "euler_a"},
        {"prompt": "bad", "sampler": "k_euler"},
        {"prompt": "bad pair", "sampler": "ddim", "schedule": "karras"},
        {"prompt": "good heun", "seed": 2, "sampler": "heun", "schedule": "karras"},
    ]
    responses = _while_worker_is_busy(server, bodies)
    assert [r.status_code for r in responses] == [200, 400, 400, 200]
    errors = [responses[i].json()["error"] for i in (1, 2)]
    assert [(e["field"], e["value"]) for e in errors] == [("sampler", "k_euler"), ("schedule", "karras")]
    assert responses[3].json()["batch"]["requests"] == 4 and responses[3].json()["batch"]["group_requests"] == 2
    assert responses[3].json()["batch"]["unet_forwards"] == 7  # heun: 2N - 1 for the tiny yaml's 4 steps


def test_bad_sizes_and_long_prompts_fail_alone_inside_a_batch(server):
    bodies = [
        {"prompt": "good", "seed": 1, "original_size": [128, 128], "crops_coords_top_left": [8, 8]},
        {"prompt": "bucket", "aspect_ratio": "1:1"},  # 1024 px: outside the tiny model's 32..512
        {"prompt": "a red cat " * 60},  # 240 tokens: past max_prompt_chunks (225)
        {"prompt": "half", "negative_original_size": [64, 64]},
    ]
    responses = _while_worker_is_busy(server, bodies)
    assert [r.status_code for r in responses] == [200, 400, 400, 400]
    errors = [r.json()["error"] for r in responses[1:]]
    assert [e["field"] for e in errors] == ["aspect_ratio", "prompt", "negative_original_size"]
    assert "240 tokens in 4 chunks" in errors[1]["message"]
    assert responses[0].json()["parameters"]["crops_coords_top_left"] == [8, 8]


def test_same_request_same_image_alone_or_batched(server):
    target = {"prompt": "a lighthouse at dawn", "seed": 1234, "negative_prompt": "blurry"}
    alone = server.predict(target)
    batched = _while_worker_is_busy(server, [{"prompt": "other", "seed": 9}, target, {"prompt": "x", "seed": 5}])
    assert alone.json()["batch"]["requests"] == 1
    assert batched[1].json()["batch"]["requests"] == 3
    # Bit-identical on some CPUs; others pick other BLAS kernels for a batch of 6 UNet rows (measured: 1/255).
    difference = np.abs(np.asarray(images_of(batched[1])[0], np.int16) - np.asarray(images_of(alone)[0], np.int16))
    assert difference.max() <= 1, f"max per-pixel difference {difference.max()}/255"


def test_malformed_bodies_get_clear_400s(server):
    url = f"{server.inference_url}/predictions/{MODEL_NAME}"
    auth = server.headers()
    cases = [
        (b'{"prompt": "a",', {"Content-Type": "application/json"}, "not valid JSON"),
        (b"\xff\xfe\x00", {"Content-Type": "application/octet-stream"}, "not valid UTF-8"),
        (b'["a cat"]', {"Content-Type": "application/json"}, "must be a JSON object but is an array"),
        (b'{"prompt": "a", "prompt": "b"}', {"Content-Type": "application/json"}, "more than once"),
        (b'{"prompt": "a", "guidance_scale": NaN}', {"Content-Type": "application/json"}, "not a JSON number"),
        (b'{"prompt": "a", "cfg_scale": 7}', {"Content-Type": "application/json"}, "unknown field(s) `cfg_scale`"),
        # curl -d without a Content-Type sends a form, which TorchServe's form decoder swallows.
        (b'{"prompt": "a"}', {"Content-Type": "application/x-www-form-urlencoded"}, "curl -d without it"),
    ]
    for body, headers, message in cases:
        response = requests.post(url, data=body, headers={**auth, **headers}, timeout=60)
        assert response.status_code == 400, (body, response.text)
        assert message in response.json()["error"]["message"], (body, response.text)


def test_json_sent_as_text_is_accepted(server):
    url = f"{server.inference_url}/predictions/{MODEL_NAME}"
    response = requests.post(
        url,
        data='{"prompt": "as text", "seed": 2}',
        headers={**server.headers(), "Content-Type": "text/plain"},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.json()["seeds"] == [2]


def test_worker_survives_errors_and_keeps_serving(server):
    pid_before = server.worker_pids()
    bad = [{"prompt": ""}, {"prompt": "x", "seed": -5}, {"prompt": "x", "num_images_per_prompt": 99}]
    assert [r.status_code for r in concurrently(server, bad)] == [400, 400, 400]
    good = server.predict({"prompt": "still alive", "seed": 11})
    assert good.status_code == 200
    assert server.worker_pids() == pid_before


def test_the_png_carries_its_recipe_and_a1111s_parser_reads_back_the_request(server, model_store):
    """The real server's PNG (as TorchServe sends it, raw and in JSON) holds the A1111 infotext: every recipe
    field of the request, the served model's name and its UNet hash; ``embed_parameters: false`` holds none."""
    import hashlib

    from handler.contract.parse import parse_request
    from tests.unit.test_infotext import parse_generation_parameters, recipe_of, request_fields

    body = {"prompt": "a (red cat:1.3), on a hill", "prompt_syntax": "a1111", "negative_prompt": "blurry",
            "seed": 11, "sampler": "dpmpp_2m", "schedule": "karras", "guidance_scale": 4.5, "width": 64,
            "height": 64, "num_inference_steps": 3}  # fmt: skip
    raw = server.predict({**body, "response_format": "image"})
    document = server.predict(body)
    bare = server.predict({**body, "embed_parameters": False})
    assert raw.status_code == document.status_code == bare.status_code == 200
    text = Image.open(io.BytesIO(raw.content)).info["parameters"]
    assert images_of(document)[0].info["parameters"] == text
    assert "parameters" not in images_of(bare)[0].info
    parsed = parse_generation_parameters(text)
    unet = sorted((model_store.parent / "build" / "tiny-sdxl" / "unet").glob("*.safetensors"))  # what was packed
    assert parsed.pop("Model") == MODEL_NAME
    assert parsed.pop("Model hash") == hashlib.sha256(b"".join(p.read_bytes() for p in unet)).hexdigest()[:10]
    request = parse_request({**body, "embed_parameters": True})
    assert request_fields(parsed, request) == recipe_of(request)
