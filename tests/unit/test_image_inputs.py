"""img2img and inpainting on the tiny pipelines: diffusers' images, batched with text-to-image in both modes."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import diffusers
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline

from handler.contract.errors import InvalidRequest
from handler.contract.parse import parse_request
from handler.model.loading import load_pipeline
from handler.model.tiny_model import save_tiny_pipeline
from handler.runtime.core import Core
from tests.helpers import Frontend, body_pixels, make_engine, max_diff
from tests.images import b64, encoded, half_mask, malformed_image_bodies, picture

INIT = picture(64, 64)
MASK = half_mask(64, 64)
ALL_ONES = half_mask(64, 64).point(lambda _: 255)
CALL = {"prompt": "a red cat", "num_inference_steps": 4, "guidance_scale": 5.0}


@pytest.fixture
def make(tiny_settings):
    def make_request(**fields):
        return parse_request({"prompt": "a red cat", "seed": 7, **fields}, tiny_settings.limits, tiny_settings.defaults)

    return make_request


@pytest.fixture(scope="module")
def engine(tiny_loaded):
    return make_engine(tiny_loaded)


@pytest.fixture(scope="module")
def inpainting_loaded(tmp_path_factory, tiny_settings):
    """The tiny pipeline with a 9-channel inpainting UNet, loaded as a model yaml would load it."""
    folder = save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sdxl-inpainting", inpainting=True)
    return load_pipeline(str(folder), tiny_settings)


def generator(seed: int = 7) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed)]


def inpaint_reference(pipeline, mask=MASK, strength=0.75, scheduler=None, **call):
    """diffusers' StableDiffusionXLInpaintPipeline on the same components (and optionally another scheduler)."""
    inpaint = StableDiffusionXLInpaintPipeline.from_pipe(pipeline, **({"scheduler": scheduler} if scheduler else {}))
    arguments = {**CALL, "image": INIT, "mask_image": mask, "strength": strength, "height": 64, "width": 64, **call}
    return inpaint(**arguments, generator=generator()).images[0]


@pytest.mark.parametrize("strength", [0.5, 0.75])
def test_img2img_equals_the_diffusers_img2img_pipeline(engine, tiny_loaded, make, strength):
    ours = engine.generate([make(image=b64(INIT), strength=strength)])[0][0]
    img2img = StableDiffusionXLImg2ImgPipeline.from_pipe(tiny_loaded.pipeline)
    reference = img2img(**CALL, image=INIT, strength=strength, generator=generator()).images[0]
    assert max_diff(ours, reference) <= 1


def test_strength_decides_the_steps_that_run(core, make):
    light, strong = make(image=b64(INIT), strength=0.5), make(image=b64(INIT), strength=1.0)
    assert (light.denoising_steps, strong.denoising_steps) == (2, 4)
    bodies = [{"prompt": "a", "image": b64(INIT), "strength": strength} for strength in (0.5, 1.0)]
    replies = core.handle([{"body": json.dumps(body).encode()} for body in bodies])
    assert [reply.json()["batch"]["unet_forwards"] for reply in replies] == [2, 4]


@pytest.mark.parametrize("strength", [0.75, 1.0])
def test_inpainting_on_the_base_unet_equals_the_diffusers_inpaint_pipeline(engine, tiny_loaded, make, strength):
    request = make(image=b64(INIT), mask_image=b64(MASK), strength=strength, keep_unmasked=False)
    ours = engine.generate([request])[0][0]
    assert max_diff(ours, inpaint_reference(tiny_loaded.pipeline, strength=strength)) <= 1


def test_inpainting_with_a_noise_adding_sampler_draws_the_pipelines_noise(engine, tiny_loaded, make):
    """Euler ancestral draws noise at every step: equal only if the generators were used in the pipeline's order."""
    request = make(image=b64(INIT), mask_image=b64(MASK), strength=0.75, keep_unmasked=False, sampler="euler_a")
    ours = engine.generate([request])[0][0]
    scheduler = diffusers.EulerAncestralDiscreteScheduler.from_config(tiny_loaded.pipeline.scheduler.config)
    assert max_diff(ours, inpaint_reference(tiny_loaded.pipeline, scheduler=scheduler)) <= 1


def test_unmasked_pixels_are_the_inputs_own_and_the_masked_ones_the_generated(engine, make):
    kept, raw = engine.generate(
        [
            make(image=b64(INIT), mask_image=b64(MASK)),
            make(image=b64(INIT), mask_image=b64(MASK), keep_unmasked=False),
        ]
    )
    kept, raw, init = (np.asarray(image[0], dtype=np.int16) for image in (kept, raw, [INIT]))
    assert np.array_equal(kept[:, :32], init[:, :32])  # black in the mask: kept
    assert np.abs(kept[:, 32:] - raw[:, 32:]).max() <= 1  # white: repainted, as decoded
    assert np.abs(raw[:, :32] - init[:, :32]).mean() > 10  # the tiny random VAE's round trip is far off


def test_a_9_channel_unet_serves_inpainting_img2img_and_text_to_image(inpainting_loaded, tiny_settings):
    pipeline = inpainting_loaded.pipeline
    assert pipeline.unet.config.in_channels == 9
    engine = make_engine(inpainting_loaded)

    def make(**fields):
        return parse_request({**CALL, "seed": 7, **fields}, tiny_settings.limits, tiny_settings.defaults)

    inpainted, img2img, text = engine.generate(
        [
            make(image=b64(INIT), mask_image=b64(MASK), strength=0.75, keep_unmasked=False),
            make(image=b64(INIT), strength=0.5),
            make(),
        ]
    )
    assert max_diff(inpainted[0], inpaint_reference(pipeline)) <= 1
    # Without a mask: an all-ones mask (repaint everything), as A1111 does; text only: strength 1, from noise.
    assert max_diff(img2img[0], inpaint_reference(pipeline, mask=ALL_ONES, strength=0.5)) <= 1
    assert max_diff(text[0], inpaint_reference(pipeline, mask=ALL_ONES, strength=1.0)) <= 1


def test_img2img_inpainting_and_text_in_one_batch_each_equal_their_solo_images(engine, make):
    requests = [
        make(image=b64(INIT), strength=0.5, seed=1),
        make(prompt="sea", seed=2, num_inference_steps=6, guidance_scale=1.0),
        make(image=b64(picture(64, 64, seed=3)), mask_image=b64(MASK), strength=0.75, seed=3, sampler="euler_a"),
        make(image=b64(INIT), strength=0.75, seed=4, num_images_per_prompt=2),
    ]
    together = engine.generate(requests)
    for request, images in zip(requests, together, strict=True):
        alone = engine.generate([request])[0]
        assert [max_diff(a, b) for a, b in zip(images, alone, strict=True)] <= [1] * len(images)
    # Image i of a request is the single image of seed + i, img2img included.
    second = engine.generate([make(image=b64(INIT), strength=0.75, seed=5)])[0][0]
    assert max_diff(together[3][1], second) <= 1


@pytest.mark.parametrize("overlap", [False, True])
def test_image_requests_joining_a_running_loop_make_their_static_images(tiny_loaded, tiny_settings, core, overlap):
    """Continuous batching: the VAE encode inline (CPU default) or on the side thread; the same images."""
    counter = itertools.count(1000)
    settings = tiny_settings.with_changes(continuous=True, steps_per_call=1, overlap_side_work=overlap)
    frontend = Frontend(Core(tiny_loaded, settings, seed_source=lambda: next(counter)))
    bodies = [
        {"prompt": "img2img", "seed": 11, "image": b64(INIT), "strength": 0.75},
        {"prompt": "inpaint", "seed": 12, "image": b64(INIT), "mask_image": b64(MASK), "strength": 1.0},
    ]
    frontend.submit({"prompt": "long text", "seed": 10, "num_inference_steps": 8})
    frontend.call()
    joined = [frontend.submit(body) for body in bodies]
    frontend.run_until_idle()

    for body, response in zip(bodies, joined, strict=True):
        static = core.handle([{"body": json.dumps(body).encode()}])[0].json()
        assert response.status == 200 and response.json()["batch"]["shared_steps"] >= 1
        assert np.abs(body_pixels(response.json()) - body_pixels(static)).max() <= 1
        assert "vae_encode" in response.json()["timings_ms"]
    assert frontend.core.flights == {}


def test_the_record_echoes_each_input_images_hash_and_size_never_the_image(core):
    image, mask = encoded(INIT), encoded(MASK, "PNG")
    body = {"prompt": "a cat", "seed": 3, "image": b64(image), "mask_image": b64(mask), "response_format": "image"}
    reply = core.handle([{"body": json.dumps(body).encode()}])[0]
    parameters = json.loads(reply.headers["X-Parameters"])
    assert parameters["image"] == {
        "sha256": __import__("hashlib").sha256(image).hexdigest(),
        "format": "png",
        "bytes": len(image),
        "width": 64,
        "height": 64,
    }
    assert parameters["mask_image"]["bytes"] == len(mask) and parameters["strength"] == 0.8
    assert b64(image)[:40] not in reply.headers["X-Parameters"]


def test_resize_modes_fit_an_image_of_another_size_and_none_refuses_it(make):
    wide = b64(picture(128, 64))
    for mode in ("resize", "crop", "fill"):
        request = make(image=wide, width=64, height=64, resize_mode=mode)
        assert request.image.pixels.size == (64, 64) and request.image.width == 128
    with pytest.raises(InvalidRequest, match=r"`image` is 128x64 but the request is 64x64") as refused:
        make(image=wide, width=64, height=64)
    assert refused.value.field == "image"
    assert make(image=wide).width == 128  # width/height left out: the image's own size


def test_exif_orientation_is_applied_and_any_mode_becomes_rgb(make):
    tall = picture(64, 128)
    exif = tall.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view": the viewer sees a 128x64 picture
    request = make(image=b64(encoded(tall, "JPEG", exif=exif.tobytes())))
    assert (request.width, request.height) == (128, 64) and request.image.pixels.mode == "RGB"
    for mode in ("RGBA", "P", "L", "CMYK"):
        source = picture().convert(mode)
        fmt = "JPEG" if mode == "CMYK" else "PNG"
        assert make(image=b64(source, fmt)).image.pixels.mode == "RGB"
    assert make(image=b64(INIT), mask_image=b64(MASK.convert("RGB"))).mask_image.pixels.mode == "L"


@pytest.mark.parametrize(
    ("what", "body", "field"), malformed_image_bodies(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_malformed_image_inputs_are_400s_naming_the_field(tiny_settings, what, body, field):
    with pytest.raises(InvalidRequest) as raised:
        parse_request(body, tiny_settings.limits, tiny_settings.defaults)
    assert raised.value.field == field and f"`{field}`" in raised.value.message, what


def test_an_image_over_max_image_bytes_is_refused_before_it_is_decoded(tiny_settings):
    size = len(encoded(INIT))
    for limit in (size // 10, size - 1):  # caught on the base64 text's length / on the decoded bytes
        limits = replace(tiny_settings.limits, max_image_bytes=limit)
        with pytest.raises(InvalidRequest, match=rf"over the limit of {limit} (bytes of image )?\(max_image_bytes\)"):
            parse_request({"prompt": "a", "image": b64(INIT)}, limits, tiny_settings.defaults)
