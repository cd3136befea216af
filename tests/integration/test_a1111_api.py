"""The A1111 API subset on the real stack, driven by the `webuiapi` client from PyPI: its images equal the ones
/predictions makes for the mapped request, the same seeded request gives the same pixels over A1111, OpenAI and
our own API, and malformed bodies are 4xx in A1111's error shape naming A1111's field, with nothing queued."""

from __future__ import annotations

import base64
import io

import numpy as np
import openai
import pytest
import requests
import webuiapi
from PIL import Image

from tests.images import b64, half_mask, picture
from tests.integration.jobs_stack import JobStack


@pytest.fixture(scope="module")
def stack(tmp_path_factory, server):
    stack = JobStack(tmp_path_factory.mktemp("a1111"), server).start()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def api(stack):
    host, port = stack.gateway.url.removeprefix("http://").split(":")
    return webuiapi.WebUIApi(host=host, port=int(port), username="me", password=stack.key(), sampler="Euler", steps=4)


def pixels(image) -> list:
    """An image's RGB pixels, whether a PIL image (webuiapi decodes them) or PNG bytes."""
    image = Image.open(io.BytesIO(image)) if isinstance(image, bytes) else image
    return np.asarray(image.convert("RGB")).tolist()


def direct(server, body: dict) -> list[list]:
    response = server.predict(body)
    assert response.status_code == 200, response.text
    return [pixels(base64.b64decode(image)) for image in response.json()["images"]]


def test_txt2img_equals_predictions_and_info_has_the_seeds(api, server):
    result = api.txt2img(prompt="a red fox", seed=21, width=64, height=64, batch_size=2, cfg_scale=6.5)
    body = {"prompt": "a red fox", "seed": 21, "width": 64, "height": 64, "num_images_per_prompt": 2,
            "guidance_scale": 6.5, "num_inference_steps": 4, "sampler": "euler", "negative_prompt": ""}  # fmt: skip
    assert [pixels(image) for image in result.images] == direct(server, body)
    assert result.info["all_seeds"] == [21, 22] and result.info["sampler_name"] == "Euler"


def test_img2img_and_inpainting_equal_predictions(api, server):
    init = picture(64, 64)
    result = api.img2img(images=[init], prompt="a boat", seed=4, width=64, height=64, denoising_strength=0.5)
    body = {"prompt": "a boat", "seed": 4, "image": b64(init), "strength": 0.5, "num_inference_steps": 4,
            "sampler": "euler", "guidance_scale": 7.0, "width": 64, "height": 64, "resize_mode": "resize"}  # fmt: skip
    assert pixels(result.images[0]) == direct(server, body)[0]
    inpainted = api.img2img(images=[init], mask_image=half_mask(64, 64), prompt="a boat", seed=4, width=64,
                            height=64, denoising_strength=0.5, mask_blur=0, inpainting_fill=1,
                            inpaint_full_res=False)  # fmt: skip
    assert pixels(inpainted.images[0]) == direct(server, {**body, "mask_image": b64(half_mask(64, 64))})[0]


def test_the_same_request_gives_the_same_pixels_over_a1111_openai_and_our_api(api, stack):
    ours = stack.submit({"prompt": "a kite", "seed": 11, "num_inference_steps": 4, "sampler": "euler",
                         "guidance_scale": 5.0})  # fmt: skip
    assert stack.wait(ours.json()["job_id"])["status"] == "completed"
    own = stack.image(ours.json()["job_id"]).content
    client = openai.OpenAI(base_url=f"{stack.gateway.url}/v1", api_key=stack.key(), max_retries=0)
    over_openai = client.images.generate(prompt="a kite", size="64x64", extra_body={
        "seed": 11, "num_inference_steps": 4, "sampler": "euler", "guidance_scale": 5.0})  # fmt: skip
    over_a1111 = api.txt2img(prompt="a kite", seed=11, width=64, height=64, steps=4, cfg_scale=5.0)
    assert pixels(base64.b64decode(over_openai.data[0].b64_json)) == pixels(own) == pixels(over_a1111.images[0])


def test_listings_and_progress(api):
    assert [model["model_name"] for model in api.get_sd_models()] == ["stable-diffusion-xl"]
    names = [sampler["name"] for sampler in api.get_samplers()]
    assert "Euler a" in names and "DPM++ 2M" in names and "deis" in names
    assert [s["name"] for s in api.get_schedulers()] == ["automatic", "karras", "exponential", "sgm_uniform"]
    assert api.get_progress()["progress"] == 0.0  # nothing of this key runs


def test_an_a1111_sampler_name_with_karras_maps_to_our_pair(api, server):
    result = api.txt2img(prompt="x", seed=2, width=64, height=64, sampler_name="DPM++ 2M Karras")
    body = {"prompt": "x", "seed": 2, "width": 64, "height": 64, "num_inference_steps": 4, "guidance_scale": 7.0,
            "sampler": "dpmpp_2m", "schedule": "karras"}  # fmt: skip
    assert pixels(result.images[0]) == direct(server, body)[0]


MALFORMED = [
    ({"prompt": "x", "steps": 0}, "steps"),
    ({"prompt": "x", "steps": "20"}, "steps"),
    ({"prompt": "x", "steps": 1000}, "steps"),
    ({"prompt": "x", "cfg_scale": "7"}, "cfg_scale"),
    ({"prompt": "x", "cfg_scale": -1}, "cfg_scale"),
    ({"prompt": "x", "width": 65}, "width"),
    ({"prompt": "x", "width": "64"}, "width"),
    ({"prompt": "x", "height": 4096}, "height"),
    ({"prompt": "x", "seed": -2}, "seed"),
    ({"prompt": "x", "seed": "1"}, "seed"),
    ({"prompt": "x", "batch_size": 0}, "batch_size"),
    ({"prompt": "x", "batch_size": 9}, "batch_size"),
    ({"prompt": "x", "n_iter": 0}, "n_iter"),
    ({"prompt": "x", "batch_size": 2, "n_iter": 3}, "batch_size"),
    ({"prompt": "x", "sampler_name": "Euler b"}, "sampler_name"),
    ({"prompt": "x", "sampler_name": "DPM fast"}, "sampler_name"),
    ({"prompt": "x", "sampler_name": "PLMS"}, "sampler_name"),
    ({"prompt": "x", "sampler_index": "LMS"}, "sampler_index"),
    ({"prompt": "x", "scheduler": "polyexponential"}, "scheduler"),
    ({"prompt": "x", "sampler_name": "DDIM", "scheduler": "karras"}, "scheduler"),
    ({"prompt": "x", "sampler_name": "Euler a", "eta": 0.5}, "eta"),
    ({"prompt": "x", "enable_hr": True}, "enable_hr"),
    ({"prompt": "x", "restore_faces": True}, "restore_faces"),
    ({"prompt": "x", "tiling": True}, "tiling"),
    ({"prompt": "x", "subseed_strength": 0.5}, "subseed_strength"),
    ({"prompt": "x", "styles": ["cinematic"]}, "styles"),
    ({"prompt": "x", "override_settings": {"CLIP_stop_at_last_layers": 2}}, "override_settings"),
    ({"prompt": "x", "s_noise": 0.9}, "s_noise"),
    ({"prompt": "x", "hypernetwork": "h"}, "hypernetwork"),
    ({"prompt": "x", "init_images": [b64(picture(64, 64))]}, "init_images"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({}, "prompt"),
]


@pytest.mark.parametrize(("body", "field"), MALFORMED)
def test_malformed_txt2img_bodies_are_4xx_in_a1111s_shape_naming_its_field(stack, body, field):
    response = requests.post(f"{stack.gateway.url}/sdapi/v1/txt2img", json=body, headers=stack.headers(), timeout=30)
    assert 400 <= response.status_code < 500, response.text
    error = response.json()
    assert {"error", "detail", "errors"} <= set(error) and error["field"] == field, error
    assert stack.depth() == (0, 0)


IMG2IMG_MALFORMED = [
    ({"prompt": "x"}, "init_images"),
    ({"prompt": "x", "init_images": []}, "init_images"),
    ({"prompt": "x", "init_images": ["bm90IGFuIGltYWdl"]}, "init_images"),
    ({"prompt": "x", "init_images": [b64(picture(64, 64))], "denoising_strength": 2}, "denoising_strength"),
    ({"prompt": "x", "init_images": [b64(picture(64, 64))], "resize_mode": 3}, "resize_mode"),
    ({"prompt": "x", "init_images": [b64(picture(64, 64))], "mask": b64(half_mask()), "mask_blur": 4}, "mask_blur"),
    (
        {
            "prompt": "x",
            "init_images": [b64(picture(64, 64))],
            "mask": b64(half_mask()),
            "inpainting_fill": 0,
            "mask_blur": 0,
        },
        "inpainting_fill",
    ),
]


@pytest.mark.parametrize(("body", "field"), IMG2IMG_MALFORMED)
def test_malformed_img2img_bodies_are_4xx_naming_a1111s_field(stack, body, field):
    response = requests.post(f"{stack.gateway.url}/sdapi/v1/img2img", json=body, headers=stack.headers(), timeout=30)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["field"] == field, response.json()
    assert stack.depth() == (0, 0)


def test_no_key_no_answer(stack):
    assert requests.get(f"{stack.gateway.url}/sdapi/v1/sd-models", timeout=10).status_code == 401
