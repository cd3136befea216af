"""The full-size benchmark pipeline really has SDXL base 1.0's size (built on the meta device: no memory)."""

import pytest

from bench.full_sdxl import build_full_size_pipeline, tflop_per_image


def test_full_size_pipeline_has_sdxl_base_parameter_counts():
    pipeline = build_full_size_pipeline(device="meta")

    def billions(module):
        return sum(p.numel() for p in module.parameters()) / 1e9

    assert billions(pipeline.unet) == pytest.approx(2.567, abs=0.01)
    assert billions(pipeline.text_encoder_2) == pytest.approx(0.695, abs=0.01)
    assert billions(pipeline.vae) == pytest.approx(0.0838, abs=0.001)
    assert pipeline.unet.config.cross_attention_dim == 2048


def test_compute_per_image_matches_the_published_figures():
    assert tflop_per_image(20) == pytest.approx(281, abs=1)
    assert tflop_per_image(30) == pytest.approx(416, abs=1)
