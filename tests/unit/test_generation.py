"""Denoising with per-request state: the pipeline's images, whoever a request shares its steps with."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from handler.denoise import Denoiser
from handler.errors import TimeBudgetExceeded
from handler.generate import generate_group
from handler.schema import parse_request


@pytest.fixture
def make(tiny_settings):
    def make_request(**fields):
        return parse_request({"prompt": "a red cat", "seed": 7, **fields}, tiny_settings.limits, tiny_settings.defaults)

    return make_request


@pytest.fixture(scope="module")
def denoiser(tiny_loaded):
    return Denoiser(tiny_loaded.pipeline, tiny_loaded.device)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def run(denoiser, requests, **kwargs):
    return generate_group(denoiser, requests, **kwargs).outcomes


def max_diff(a, b) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


def test_one_request_matches_the_diffusers_pipeline(denoiser, tiny_loaded, make):
    request = make(negative_prompt="blurry", num_inference_steps=5, width=96)
    ours = run(denoiser, [request])[0][0]
    reference = tiny_loaded.pipeline(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        num_inference_steps=5,
        guidance_scale=request.guidance_scale,
        width=96,
        height=64,
        generator=[torch.Generator("cpu").manual_seed(7)],
    ).images[0]
    assert max_diff(ours, reference) <= 1


def test_same_request_gives_the_same_image_alone_and_batched(denoiser, make):
    target = make(negative_prompt="blurry")
    alone = run(denoiser, [target])[0][0]
    mates = [
        make(prompt="a dog", seed=1, num_inference_steps=2),
        make(prompt="sea", seed=2, num_images_per_prompt=2, guidance_scale=1.0, num_inference_steps=6),
    ]
    in_front = run(denoiser, [*mates, target])[2][0]
    behind = run(denoiser, [target, *reversed(mates)])[0][0]
    # Bit-identical on the CPU (measured); one level of tolerance in case BLAS picks other kernels.
    assert max_diff(alone, in_front) <= 1
    assert max_diff(alone, behind) <= 1


def test_requests_with_other_steps_and_guidance_match_their_solo_images(denoiser, make):
    short = make(num_inference_steps=2, seed=3)
    unguided = make(guidance_scale=1.0, seed=4, num_inference_steps=6)
    together = run(denoiser, [short, unguided])
    assert max_diff(together[0][0], run(denoiser, [short])[0][0]) <= 1
    assert max_diff(together[1][0], run(denoiser, [unguided])[0][0]) <= 1


def test_image_i_of_a_request_uses_seed_plus_i(denoiser, make):
    pair = run(denoiser, [make(seed=10, num_images_per_prompt=2)])[0]
    second_alone = run(denoiser, [make(seed=11)])[0][0]
    assert max_diff(pair[1], second_alone) <= 1
    assert max_diff(pair[0], pair[1]) > 10


def test_seed_prompt_and_negative_prompt_each_change_the_image(denoiser, make):
    base = make()
    variants = [replace(base, seed=8), replace(base, prompt="a blue dog"), replace(base, negative_prompt="ugly")]
    images = run(denoiser, [base, *variants])
    for variant_images in images[1:]:
        assert np.abs(pixels(images[0][0]) - pixels(variant_images[0])).mean() > 1


def test_images_have_the_requested_size(denoiser, make):
    images = run(denoiser, [make(width=96, height=48, num_images_per_prompt=2)])[0]
    assert [image.size for image in images] == [(96, 48), (96, 48)]


def test_an_expired_request_stops_alone_and_the_others_finish(denoiser, make):
    slow, quick = make(num_inference_steps=20, timeout_s=1.0), make(num_inference_steps=3, seed=2)
    seen_steps = []
    # The deadline is already over: the slow request must stop after its first step, not run all 20.
    outcomes = run(
        denoiser, [slow, quick], deadlines=[0.0, None], on_step=lambda states: seen_steps.append(len(states))
    )
    assert isinstance(outcomes[0], TimeBudgetExceeded)
    assert "ran out after step 1 of 20" in outcomes[0].message
    assert len(outcomes[1]) == 1
    assert seen_steps == [2, 1, 1]
    assert max_diff(outcomes[1][0], run(denoiser, [quick])[0][0]) <= 1


def _nan_decodes(monkeypatch, vae, when):
    """Fault injection on the VAE: its decode returns NaN for the first image whenever ``when(vae)``."""
    real_decode = vae.decode

    def decode(latents, *args, **kwargs):
        output = real_decode(latents, *args, **kwargs)
        if when(vae):
            output[0][0] = float("nan")
        return output

    monkeypatch.setattr(vae, "decode", decode)


def test_a_non_finite_decode_is_retried_with_the_vae_in_float32(tiny_model_dir, make, monkeypatch):
    from handler.loading import load_pipeline
    from handler.settings import HandlerSettings

    loaded = load_pipeline(str(tiny_model_dir), HandlerSettings(dtype="bfloat16"))
    denoiser = Denoiser(loaded.pipeline, loaded.device)
    requests = [make(seed=1), make(seed=2)]
    _nan_decodes(monkeypatch, loaded.pipeline.vae, when=lambda vae: vae.dtype == torch.bfloat16)
    outcomes = run(denoiser, requests)
    assert all(isinstance(o, list) for o in outcomes)  # the NaN one was decoded again in float32
    assert loaded.pipeline.vae.dtype == torch.bfloat16  # and the VAE went back to its dtype
    assert pixels(outcomes[0][0]).max() > 0

    monkeypatch.undo()
    _nan_decodes(monkeypatch, loaded.pipeline.vae, when=lambda vae: True)
    outcomes = run(denoiser, requests)
    assert "NaN/inf values even in float32" in str(outcomes[0])
    assert isinstance(outcomes[1], list) and len(outcomes[1]) == 1
