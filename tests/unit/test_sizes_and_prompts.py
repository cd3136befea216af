"""Sizes (SDXL buckets, allowed sizes), micro-conditioning and prompt lengths: the pipeline's rules, or a 400."""

import json

import pytest

from handler.contract.parse import parse_request
from handler.contract.request import Defaults, Limits
from handler.contract.settings import HandlerSettings
from handler.contract.sizes import SDXL_BUCKETS
from handler.runtime.core import Core
from handler.runtime.startup import warm_up
from tests.helpers import make_engine, max_diff, pipeline_image


def rows(*bodies):
    return [{"body": json.dumps(body).encode()} for body in bodies]


def test_micro_conditioning_fields_make_the_pipelines_image(tiny_loaded, tiny_settings):
    conditioning = {
        "original_size": [128, 96],
        "crops_coords_top_left": [16, 8],
        "target_size": [64, 64],
        "negative_original_size": [32, 32],
        "negative_crops_coords_top_left": [0, 4],
        "negative_target_size": [48, 48],
    }
    request = parse_request(
        {"prompt": "a red cat", "seed": 7, **conditioning}, tiny_settings.limits, tiny_settings.defaults
    )
    ours = make_engine(tiny_loaded).generate([request])[0][0]
    reference = pipeline_image(tiny_loaded.pipeline, **{name: tuple(value) for name, value in conditioning.items()})
    assert max_diff(ours, reference) <= 1
    plain = make_engine(tiny_loaded).generate([parse_request({"prompt": "a red cat", "seed": 7}, tiny_settings.limits,
                                                             tiny_settings.defaults)])[0][0]  # fmt: skip
    assert max_diff(ours, plain) > 1  # the fields do reach the UNet


@pytest.mark.parametrize(("ratio", "size"), list(SDXL_BUCKETS.items()))
def test_an_aspect_ratio_resolves_to_its_sdxl_bucket(ratio, size):
    request = parse_request({"prompt": "x", "aspect_ratio": ratio})
    assert (request.width, request.height) == size
    assert parse_request(json.loads(json.dumps(request.parameters()))) == request  # the echo, as JSON, is valid


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"aspect_ratio": "3:2"}, "aspect_ratio", "must be one of 1:1, 9:7"),
        ({"aspect_ratio": "7:4", "width": 1024}, "width", "contradicts `aspect_ratio` 7:4 (1344x768)"),
        ({"original_size": [1024]}, "original_size", "must be a list of two integers"),
        ({"crops_coords_top_left": [0, -1]}, "crops_coords_top_left", "between 0 and 8192"),
        ({"negative_target_size": [64, 64]}, "negative_target_size", "go together"),
    ],
)
def test_bad_size_values_name_the_field(body, field, message):
    with pytest.raises(Exception) as raised:
        parse_request({"prompt": "x", **body})
    assert raised.value.field == field and message in raised.value.message


def test_an_aspect_ratio_outside_the_models_sizes_is_a_400_naming_it():
    with pytest.raises(Exception) as raised:
        parse_request(
            {"prompt": "x", "aspect_ratio": "1:1"}, Limits(min_size=32, max_size=512), Defaults(width=64, height=64)
        )
    assert raised.value.field == "aspect_ratio" and "1024x1024, outside this model's sizes 32..512" in str(raised.value)


def test_allowed_sizes_refuse_the_others_and_are_all_warmed_up(tiny_loaded):
    settings = HandlerSettings.from_yaml(
        {"handler": {"defaults": {"width": 64, "height": 64, "num_inference_steps": 2},
                     "limits": {"min_size": 32, "max_size": 512, "allowed_sizes": [[64, 64], [96, 64]]}}}
    )  # fmt: skip
    assert [(s.width, s.height) for s in settings.warmup_shapes()] == [(64, 64), (96, 64)]
    core = Core(tiny_loaded, settings)
    assert len(warm_up(core)) == 3  # both sizes, then img2img at the first
    replies = core.handle(rows({"prompt": "a", "width": 96}, {"prompt": "b", "width": 128}))
    assert [r.status for r in replies] == [200, 400]
    assert replies[1].json()["error"]["message"] == (
        "`width` x `height` 128x64 is not one of this server's sizes: 64x64, 96x64"
    )


def test_a_default_size_outside_allowed_sizes_fails_at_startup():
    from handler.contract.errors import ConfigError

    with pytest.raises(ConfigError, match="not one of this server's sizes"):
        HandlerSettings.from_yaml({"handler": {"limits": {"allowed_sizes": [[768, 768]]}}})


def test_a_prompt_past_max_prompt_chunks_is_a_400_naming_its_tokens(core):
    too_long = "a red cat " * 60  # 240 tokens: 4 chunks of 75, the limit is 3
    replies = core.handle(
        rows({"prompt": "fine", "seed": 1}, {"prompt": too_long}, {"prompt": "x", "negative_prompt": too_long})
    )
    assert [r.status for r in replies] == [200, 400, 400]
    error = replies[1].json()["error"]
    assert error["field"] == "prompt" and (
        "`prompt` is 240 tokens in 4 chunks, and this server takes at most 225 (3 chunks of 75" in error["message"]
    )
    assert replies[2].json()["error"]["field"] == "negative_prompt"
    assert core.handle(rows({"prompt": "a red cat " * 56}))[0].status == 200  # 224 tokens: 3 chunks
