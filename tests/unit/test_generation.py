"""The engine's denoising with per-request state: the pipeline's images, whoever a request shares its steps with."""

import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from handler.contract.errors import TimeBudgetExceeded
from handler.contract.parse import parse_request
from tests.helpers import image_pixels, make_engine, max_diff, pipeline_image


@pytest.fixture
def make(tiny_settings):
    def make_request(**fields):
        return parse_request({"prompt": "a red cat", "seed": 7, **fields}, tiny_settings.limits, tiny_settings.defaults)

    return make_request


@pytest.fixture(scope="module")
def engine(tiny_loaded):
    return make_engine(tiny_loaded)


def run(engine, requests):
    return engine.generate(requests)


def test_one_request_matches_the_diffusers_pipeline(engine, tiny_loaded, make):
    request = make(negative_prompt="blurry", num_inference_steps=5, width=96)
    ours = run(engine, [request])[0][0]
    reference = pipeline_image(
        tiny_loaded.pipeline,
        negative_prompt="blurry",
        num_inference_steps=5,
        guidance_scale=request.guidance_scale,
        width=96,
    )
    assert max_diff(ours, reference) <= 1


def test_same_request_gives_the_same_image_alone_and_batched(engine, make):
    target = make(negative_prompt="blurry")
    alone = run(engine, [target])[0][0]
    mates = [
        make(prompt="a dog", seed=1, num_inference_steps=2),
        make(prompt="sea", seed=2, num_images_per_prompt=2, guidance_scale=1.0, num_inference_steps=6),
    ]
    in_front = run(engine, [*mates, target])[2][0]
    behind = run(engine, [target, *reversed(mates)])[0][0]
    # Bit-identical on the CPU (measured); one level of tolerance in case BLAS picks other kernels.
    assert max_diff(alone, in_front) <= 1
    assert max_diff(alone, behind) <= 1


def test_requests_with_other_steps_and_guidance_match_their_solo_images(engine, make):
    short = make(num_inference_steps=2, seed=3)
    unguided = make(guidance_scale=1.0, seed=4, num_inference_steps=6)
    together = run(engine, [short, unguided])
    assert max_diff(together[0][0], run(engine, [short])[0][0]) <= 1
    assert max_diff(together[1][0], run(engine, [unguided])[0][0]) <= 1


def test_image_i_of_a_request_uses_seed_plus_i(engine, make):
    pair = run(engine, [make(seed=10, num_images_per_prompt=2)])[0]
    second_alone = run(engine, [make(seed=11)])[0][0]
    assert max_diff(pair[1], second_alone) <= 1
    assert max_diff(pair[0], pair[1]) > 10


def test_seed_prompt_and_negative_prompt_each_change_the_image(engine, make):
    base = make()
    variants = [replace(base, seed=8), replace(base, prompt="a blue dog"), replace(base, negative_prompt="ugly")]
    images = run(engine, [base, *variants])
    for variant_images in images[1:]:
        assert np.abs(image_pixels(images[0][0]) - image_pixels(variant_images[0])).mean() > 1


def test_images_have_the_requested_size(engine, make):
    images = run(engine, [make(width=96, height=48, num_images_per_prompt=2)])[0]
    assert [image.size for image in images] == [(96, 48), (96, 48)]


def test_an_expired_request_stops_alone_and_the_others_finish(engine, make):
    slow, quick = make(num_inference_steps=20, timeout_s=1.0), make(num_inference_steps=3, seed=2)
    seen_steps = []
    # The slow one's budget is already over: it must stop after its first step, not run all 20.
    now = time.perf_counter()
    flights = [engine.admit(slow, "slow", arrived=now - 10), engine.admit(quick, "quick", arrived=now)]
    engine.advance(flights, on_step=lambda stepped: seen_steps.append(len(stepped)))
    outcomes = [flight.outcome for flight in flights]
    assert isinstance(outcomes[0], TimeBudgetExceeded)
    assert "ran out after step 1 of 20" in outcomes[0].message
    assert len(outcomes[1]) == 1
    assert seen_steps == [2, 1, 1]
    assert max_diff(outcomes[1][0], run(engine, [quick])[0][0]) <= 1


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
    from handler.contract.settings import HandlerSettings
    from handler.model.loading import load_pipeline

    loaded = load_pipeline(str(tiny_model_dir), HandlerSettings(dtype="bfloat16"))
    engine = make_engine(loaded)
    requests = [make(seed=1), make(seed=2)]
    _nan_decodes(monkeypatch, loaded.pipeline.vae, when=lambda vae: vae.dtype == torch.bfloat16)
    outcomes = run(engine, requests)
    assert all(isinstance(o, list) for o in outcomes)  # the NaN one was decoded again in float32
    assert loaded.pipeline.vae.dtype == torch.bfloat16  # and the VAE went back to its dtype
    assert image_pixels(outcomes[0][0]).max() > 0

    monkeypatch.undo()
    _nan_decodes(monkeypatch, loaded.pipeline.vae, when=lambda vae: True)
    outcomes = run(engine, requests)
    assert "NaN/inf values even in float32" in str(outcomes[0])
    assert isinstance(outcomes[1], list) and len(outcomes[1]) == 1


@pytest.mark.parametrize("scheduler_name", ["EulerAncestralDiscreteScheduler", "LCMScheduler"])
def test_with_a_sampler_that_draws_noise_while_stepping_image_i_still_equals_seed_plus_i(
    tiny_loaded, make, monkeypatch, scheduler_name
):
    import diffusers

    pipeline = tiny_loaded.pipeline
    monkeypatch.setattr(
        pipeline, "scheduler", getattr(diffusers, scheduler_name).from_config(pipeline.scheduler.config)
    )
    engine = make_engine(tiny_loaded)
    pair = run(engine, [make(seed=10, num_images_per_prompt=2)])[0]
    first_alone, second_alone = (run(engine, [make(seed=seed)])[0][0] for seed in (10, 11))
    assert max_diff(pair[0], first_alone) <= 1
    assert max_diff(pair[1], second_alone) <= 1
    # ...and the noise it drew while stepping is its own, not its batch-mate's.
    beside = run(engine, [make(seed=3, prompt="a dog"), make(seed=11)])[1][0]
    assert max_diff(beside, second_alone) <= 1


def test_a_scheduler_gets_eta_and_generators_only_where_its_step_takes_them():
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    from handler.model.request_state import scheduler_step_kwargs

    generators = [torch.Generator().manual_seed(0)]
    assert scheduler_step_kwargs(DDIMScheduler(), generators, eta=0.5) == {"generator": generators, "eta": 0.5}
    assert scheduler_step_kwargs(EulerDiscreteScheduler(), generators, eta=0.5) == {"generator": generators}
