"""A request's images depend only on that request: never on its batch-mates, their order or the batch size."""

from dataclasses import replace

import numpy as np
import pytest

from handler.generate import generate_group
from handler.schema import parse_request


@pytest.fixture
def make(tiny_settings):
    def make_request(**fields):
        return parse_request({"prompt": "a red cat", "seed": 7, **fields}, tiny_settings.limits, tiny_settings.defaults)

    return make_request


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def run(tiny_loaded, requests):
    return generate_group(tiny_loaded.pipeline, tiny_loaded.device, requests).images


def test_same_request_gives_the_same_image_alone_and_batched(tiny_loaded, make):
    target = make(negative_prompt="blurry")
    alone = run(tiny_loaded, [target])[0][0]
    mates = [make(prompt="a dog", seed=1), make(prompt="sea", negative_prompt="", seed=2, num_images_per_prompt=2)]
    in_front = run(tiny_loaded, [*mates, target])[2][0]
    behind = run(tiny_loaded, [target, *reversed(mates)])[0][0]
    # Bit-identical on the CPU (measured); the tolerance is one level in case BLAS picks other kernels.
    assert np.abs(pixels(alone) - pixels(in_front)).max() <= 1
    assert np.abs(pixels(alone) - pixels(behind)).max() <= 1


def test_image_i_of_a_request_uses_seed_plus_i(tiny_loaded, make):
    pair = run(tiny_loaded, [make(seed=10, num_images_per_prompt=2)])[0]
    second_alone = run(tiny_loaded, [make(seed=11)])[0][0]
    assert np.abs(pixels(pair[1]) - pixels(second_alone)).max() <= 1
    assert np.abs(pixels(pair[0]) - pixels(pair[1])).max() > 10


def test_seed_prompt_and_negative_prompt_each_change_the_image(tiny_loaded, make):
    base = make()
    variants = [replace(base, seed=8), replace(base, prompt="a blue dog"), replace(base, negative_prompt="ugly")]
    images = run(tiny_loaded, [base, *variants])
    for variant_images in images[1:]:
        assert np.abs(pixels(images[0][0]) - pixels(variant_images[0])).mean() > 1


def test_images_have_the_requested_size_and_no_guidance_path_works(tiny_loaded, make):
    images = run(tiny_loaded, [make(width=96, height=48, guidance_scale=1.0, num_images_per_prompt=2)])[0]
    assert [image.size for image in images] == [(96, 48), (96, 48)]
