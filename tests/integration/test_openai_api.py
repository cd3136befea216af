"""OpenAI's Images API on the real stack (Redis, gateway, dispatcher, TorchServe with the tiny model), driven by
the `openai` SDK from PyPI: each image equals the one /predictions makes for the mapped request; malformed
requests are 4xx in OpenAI's error shape naming the field, with nothing queued."""

from __future__ import annotations

import base64
import io
import json

import openai
import pytest
import requests
from PIL import Image

from tests.images import b64, half_mask, picture
from tests.integration.jobs_stack import JobStack

SMALL = {"num_inference_steps": 4}  # the tiny model's yaml: 64 x 64 by default


@pytest.fixture(scope="module")
def stack(tmp_path_factory, server):
    stack = JobStack(tmp_path_factory.mktemp("openai"), server).start()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def client(stack):
    return openai.OpenAI(base_url=f"{stack.gateway.url}/v1", api_key=stack.key(), max_retries=0, timeout=120)


def direct_images(server, body: dict) -> list[bytes]:
    response = server.predict(body)
    assert response.status_code == 200, response.text
    return [base64.b64decode(image) for image in response.json()["images"]]


def test_generate_b64_two_images_equal_predictions(client, server):
    result = client.images.generate(prompt="a red fox", n=2, size="64x64", extra_body={"seed": 7, **SMALL})
    assert [image.revised_prompt for image in result.data] == [None, None] and result.size == "64x64"
    got = [base64.b64decode(image.b64_json) for image in result.data]
    body = {"prompt": "a red fox", "num_images_per_prompt": 2, "width": 64, "height": 64, "seed": 7, **SMALL}
    assert got == direct_images(server, body)
    assert result.model_extra["sdxl"]["seeds"] == [7, 8]


def test_generate_url_points_at_the_image(client, stack, server):
    result = client.images.generate(prompt="a lighthouse", response_format="url", extra_body={"seed": 3, **SMALL})
    image = requests.get(result.data[0].url, headers=stack.headers(), timeout=30)
    assert image.status_code == 200
    assert image.content == direct_images(server, {"prompt": "a lighthouse", "seed": 3, **SMALL})[0]


def test_edit_with_an_rgba_mask_is_our_inpainting(client, server):
    init = picture(64, 64)
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (32, 0, 64, 64))  # transparent right half: edit it (half_mask's white half)
    png = io.BytesIO()
    rgba.save(png, format="PNG")
    image_file = io.BytesIO(base64.b64decode(b64(init)))
    result = client.images.edit(
        image=("init.png", image_file, "image/png"),
        mask=("mask.png", png.getvalue(), "image/png"),
        prompt="a boat",
        extra_body={"seed": 5, **SMALL},
    )
    body = {"prompt": "a boat", "seed": 5, "image": b64(init), "mask_image": b64(half_mask(64, 64)), **SMALL}
    assert base64.b64decode(result.data[0].b64_json) == direct_images(server, body)[0]


def test_models_lists_the_served_model(client):
    assert [model.id for model in client.models.list().data] == ["stable-diffusion-xl"]


def test_streaming_sends_partial_images_then_the_completed_one(client):
    events = list(
        client.images.generate(
            prompt="a kite", stream=True, partial_images=2, extra_body={"seed": 1, "num_inference_steps": 6}
        )
    )
    kinds = [event.type for event in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"], kinds
    assert [event.partial_image_index for event in events[:2]] == [0, 1]
    Image.open(io.BytesIO(base64.b64decode(events[-1].b64_json))).verify()


def test_sdk_errors_carry_the_field_and_nothing_is_queued(client, stack):
    with pytest.raises(openai.NotFoundError) as missing:
        client.images.generate(prompt="x", model="dall-e-3")
    assert missing.value.body["param"] == "model" and missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.images.generate(prompt="x", n=9)
    assert bad.value.body["param"] == "num_images_per_prompt"
    assert "`num_images_per_prompt` must be between 1 and 4 but is 9" in bad.value.body["message"]
    assert stack.depth() == (0, 0)


MALFORMED = [
    ({}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": 3}, "prompt"),
    ({"prompt": "x", "size": "64"}, "size"),
    ({"prompt": "x", "size": "64x"}, "size"),
    ({"prompt": "x", "size": "x64"}, "size"),
    ({"prompt": "x", "size": "64*64"}, "size"),
    ({"prompt": "x", "size": "-64x64"}, "size"),
    ({"prompt": "x", "size": "64x64x64"}, "size"),
    ({"prompt": "x", "size": 64}, "size"),
    ({"prompt": "x", "size": "1000x1000"}, "width"),
    ({"prompt": "x", "size": "4096x4096"}, "width"),
    ({"prompt": "x", "size": "64x64", "width": 64}, "size"),
    ({"prompt": "x", "n": 0}, "num_images_per_prompt"),
    ({"prompt": "x", "n": 5}, "num_images_per_prompt"),
    ({"prompt": "x", "n": "2"}, "num_images_per_prompt"),
    ({"prompt": "x", "n": 1.5}, "num_images_per_prompt"),
    ({"prompt": "x", "model": "gpt-image-1"}, "model"),
    ({"prompt": "x", "response_format": "png"}, "response_format"),
    ({"prompt": "x", "output_format": "gif"}, "output_format"),
    ({"prompt": "x", "quality": "ultra"}, "quality"),
    ({"prompt": "x", "style": "dark"}, "style"),
    ({"prompt": "x", "background": "transparent"}, "background"),
    ({"prompt": "x", "stream": "yes"}, "stream"),
    ({"prompt": "x", "partial_images": 2}, "partial_images"),
    ({"prompt": "x", "stream": True, "partial_images": 9}, "partial_images"),
    ({"prompt": "x", "user": 42}, "user"),
    ({"prompt": "x", "seed": -1}, "seed"),
    ({"prompt": "x", "num_inference_steps": 0}, "num_inference_steps"),
    ({"prompt": "x", "sampler": "ddim", "schedule": "karras"}, "schedule"),
    ({"prompt": "x", "guidance": 7}, "guidance"),
    ({"prompt": "x", "preview_every": 2}, "preview_every"),
]


@pytest.mark.parametrize(("body", "param"), MALFORMED)
def test_malformed_generation_bodies_are_4xx_in_openais_shape(stack, body, param):
    response = requests.post(f"{stack.gateway.url}/v1/images/generations", json=body, headers=stack.headers(),
                             timeout=30)  # fmt: skip
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param, error
    assert stack.depth() == (0, 0)


def test_malformed_edits_are_4xx_in_openais_shape(stack):
    url, headers = f"{stack.gateway.url}/v1/images/edits", stack.headers()
    rgb = io.BytesIO()
    Image.new("RGB", (64, 64)).save(rgb, format="PNG")
    init = base64.b64decode(b64(picture(64, 64)))
    cases = [
        ({"data": {"prompt": "x"}}, "image"),  # no file
        ({"files": {"image": ("i.png", init)}, "data": {"prompt": "x", "n": "9"}}, "num_images_per_prompt"),
        ({"files": {"image": ("i.png", init), "mask": ("m.png", rgb.getvalue())}, "data": {"prompt": "x"}}, "mask"),
        ({"files": {"image": ("i.png", b"not an image")}, "data": {"prompt": "x"}}, "image"),
        ({"files": {"image": ("i.png", init), "mask": ("m.png", b"junk")}, "data": {"prompt": "x"}}, "mask"),
        ({"files": {"image": ("i.png", init)}, "data": {"prompt": "x", "size": "big"}}, "size"),
    ]
    for request, param in cases:
        response = requests.post(url, headers=headers, timeout=30, **request)
        assert 400 <= response.status_code < 500, response.text
        assert response.json()["error"]["param"] == param, (param, response.json())
    as_json = requests.post(url, headers=headers, json={"prompt": "x"}, timeout=30)
    assert as_json.status_code == 415 and "multipart" in as_json.json()["error"]["message"]
    assert stack.depth() == (0, 0)


def test_a_key_is_required_and_basic_auth_carries_it_as_the_password(stack):
    url = f"{stack.gateway.url}/v1/models"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, auth=("anyone", "wrong"), timeout=10).status_code == 401
    listed = requests.get(url, auth=("anyone", stack.key()), timeout=10)
    assert listed.status_code == 200 and json.loads(listed.text)["data"][0]["id"] == "stable-diffusion-xl"
