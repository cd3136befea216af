"""Guidance-distilled UNets (time_cond_proj_dim, as LCM-SDXL): loaded, guided by embedding, batched freely."""

from types import SimpleNamespace

import diffusers
import pytest
import torch

from handler.contract.parse import parse_request
from tests.helpers import make_engine, max_diff, pipeline_image


@pytest.fixture(scope="module")
def distilled():
    from handler.model.tiny_model import build_tiny_pipeline

    pipeline = build_tiny_pipeline(time_cond_proj_dim=32)
    pipeline.scheduler = diffusers.LCMScheduler.from_config(pipeline.scheduler.config)
    return SimpleNamespace(pipeline=pipeline, device=torch.device("cpu"))


def request(guidance_scale, seed=7, **fields):
    body = {"prompt": "a red cat", "seed": seed, "num_inference_steps": 4, "width": 64, "height": 64}
    return parse_request({**body, "guidance_scale": guidance_scale, **fields})


def reference(loaded, guidance_scale, seed=7):
    return pipeline_image(loaded.pipeline, seed, guidance_scale=guidance_scale)


def test_a_guidance_distilled_unet_makes_the_pipelines_image_without_a_second_batch(distilled):
    engine = make_engine(distilled)
    state = engine.denoiser.start(request(6.0))
    assert not state.guidance and state.unet_rows == 1  # no unconditional rows
    assert state.guidance_condition.shape == (1, 32)
    assert max_diff(engine.generate([request(6.0)])[0][0], reference(distilled, 6.0)) <= 1


def test_requests_with_different_guidance_share_one_forward_and_keep_their_images(distilled):
    engine = make_engine(distilled)
    together = engine.generate([request(2.0, seed=1), request(8.0, seed=2), request(1.0, seed=3)])
    for images, (scale, seed) in zip(together, [(2.0, 1), (8.0, 2), (1.0, 3)], strict=True):
        assert max_diff(images[0], reference(distilled, scale, seed)) <= 1
    same_seed = engine.generate([request(2.0, seed=1), request(8.0, seed=1)])
    assert max_diff(same_seed[0][0], same_seed[1][0]) > 1  # the guidance embedding reaches the UNet
