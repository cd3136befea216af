import math

import pytest

from handler.contract.decode import negotiate
from handler.contract.errors import InvalidRequest
from handler.contract.fields import FIELD_NAMES as FIELDS
from handler.contract.fields import MAX_SEED
from handler.contract.parse import parse_request
from handler.contract.reference import markdown_table
from handler.contract.request import Defaults, GenerationRequest, Limits
from tests.images import b64, half_mask, picture


def test_defaults_fill_every_left_out_field():
    request = parse_request({"prompt": "a cat"})
    defaults = Defaults()
    assert request == GenerationRequest(
        prompt="a cat",
        negative_prompt=defaults.negative_prompt,
        prompt_2=None,
        negative_prompt_2=None,
        num_inference_steps=defaults.num_inference_steps,
        guidance_scale=defaults.guidance_scale,
        width=defaults.width,
        height=defaults.height,
        seed=None,
        num_images_per_prompt=1,
        output_format="png",
    )
    assert set(request.parameters()) == set(FIELDS)


def test_every_field_is_taken_from_the_request():
    body = {
        "prompt": "p",
        "negative_prompt": "n",
        "prompt_2": "p2",
        "negative_prompt_2": "n2",
        "prompt_syntax": "a1111",
        "num_inference_steps": 7,
        "guidance_scale": 3,
        "width": 512,
        "height": 768,
        "seed": MAX_SEED,
        "num_images_per_prompt": 2,
        "output_format": "webp",
        "embed_parameters": False,
        "response_format": "json",
        "stream": True,
        "preview_every": 2,
        "timeout_s": 30,
        "priority": 3,
        "deadline_s": 20,
        "sampler": "ddim",
        "schedule": "trailing",
        "eta": 0,
        "aspect_ratio": None,
        "original_size": [512, 256],
        "crops_coords_top_left": [8, 16],
        "target_size": [768, 512],
        "negative_original_size": [64, 64],
        "negative_crops_coords_top_left": [0, 8],
        "negative_target_size": [128, 128],
        "image": b64(picture(512, 768)),
        "strength": 0.5,
        "mask_image": b64(half_mask(512, 768)),
        "resize_mode": "crop",
        "keep_unmasked": False,
        "loras": [],
        "denoising_end": None,  # (the refiner's fields: tests/unit/test_refiner.py)
        "aesthetic_score": None,
        "negative_aesthetic_score": None,
    }
    request = parse_request(body)
    pairs = {name: tuple(value) for name, value in body.items() if isinstance(value, list) and name != "loras"}
    images = {name: getattr(request, name).record() for name in ("image", "mask_image")}
    assert images["image"]["width"] == 512 and images["mask_image"]["height"] == 768
    understood = {"prompt_weights": {name: [[body[name], 1.0]] for name in ("prompt", "negative_prompt", "prompt_2",
                                                                             "negative_prompt_2")}}  # fmt: skip
    numbers = {"guidance_scale": 3.0, "timeout_s": 30.0, "deadline_s": 20.0, "eta": 0.0}
    assert request.parameters() == {**body, **numbers, **pairs, **images, **understood}
    assert isinstance(request.guidance_scale, float)


def test_configured_defaults_and_limits_apply():
    limits = Limits(max_size=256, min_size=32, max_inference_steps=10)
    defaults = Defaults(width=64, height=96, num_inference_steps=4)
    request = parse_request({"prompt": "x"}, limits, defaults)
    assert (request.width, request.height, request.num_inference_steps) == (64, 96, 4)
    with pytest.raises(InvalidRequest, match="`width` must be between 32 and 256 but is 512"):
        parse_request({"prompt": "x", "width": 512}, limits, defaults)


INVALID = [
    ({"prompt": "x", "width": 1004}, "width", "`width` must be divisible by 8 but is 1004"),
    ({"prompt": "x", "height": 40}, "height", "`height` must be between 64 and 1536 but is 40"),
    ({"prompt": "x", "width": "512"}, "width", "`width` must be an integer but is a string '512'"),
    ({"prompt": "x", "width": 512.0}, "width", "`width` must be an integer but is a number 512.0"),
    ({"prompt": "x", "num_inference_steps": 0}, "num_inference_steps", "between 1 and 100 but is 0"),
    ({"prompt": "x", "num_inference_steps": True}, "num_inference_steps", "must be an integer but is a boolean"),
    ({"prompt": "x", "num_inference_steps": 10**30}, "num_inference_steps", "between 1 and 100"),
    ({"prompt": "x", "guidance_scale": -1}, "guidance_scale", "`guidance_scale` must be between 0.0 and 30.0"),
    ({"prompt": "x", "guidance_scale": math.nan}, "guidance_scale", "but is nan"),
    ({"prompt": "x", "guidance_scale": math.inf}, "guidance_scale", "but is inf"),
    ({"prompt": "x", "guidance_scale": "7"}, "guidance_scale", "must be a number but is a string"),
    ({"prompt": "x", "seed": -1}, "seed", f"`seed` must be between 0 and {MAX_SEED} but is -1"),
    ({"prompt": "x", "seed": MAX_SEED + 1}, "seed", "`seed` must be between"),
    ({"prompt": "x", "seed": 1.5}, "seed", "`seed` must be an integer"),
    ({"prompt": "x", "num_images_per_prompt": 5}, "num_images_per_prompt", "between 1 and 4 but is 5"),
    ({"prompt": "x", "output_format": "gif"}, "output_format", "one of png, jpeg, webp but is 'gif'"),
    ({"prompt": ""}, "prompt", "`prompt` must not be empty or blank"),
    ({"prompt": " \n\t"}, "prompt", "`prompt` must not be empty or blank"),
    ({"prompt": 42}, "prompt", "`prompt` must be a string but is a number"),
    ({"prompt": None}, "prompt", "`prompt` must be a string but is null"),
    ({"prompt": ["a"]}, "prompt", "`prompt` must be a string but is an array"),
    ({"prompt": "x" * 2001}, "prompt", "`prompt` must be at most 2000 characters but has 2001"),
    ({"prompt": "x", "negative_prompt": None}, "negative_prompt", "`negative_prompt` must be a string but is null"),
    ({"prompt": "x", "prompt_2": 3}, "prompt_2", "`prompt_2` must be a string or null but is a number"),
    ({"prompt": "x", "negative_prompt_2": "y" * 2001}, "negative_prompt_2", "at most 2000 characters"),
    ({"prompt": "x", "steps": 20, "cfg": 7}, "cfg", "unknown field(s) `cfg`, `steps`; accepted fields: prompt,"),
    ({"negative_prompt": "x"}, "prompt", "`prompt` is required"),
    ({"prompt": "x", "stream": "yes"}, "stream", "`stream` must be true or false but is a string 'yes'"),
    ({"prompt": "x", "stream": 1}, "stream", "`stream` must be true or false but is a number 1"),
    ({"prompt": "x", "preview_every": 2}, "preview_every", "`preview_every` needs `stream: true`"),
    ({"prompt": "x", "stream": True, "preview_every": -1}, "preview_every", "between 0 and 100 but is -1"),
    ({"prompt": "x", "timeout_s": 0}, "timeout_s", "`timeout_s` must be greater than 0 and at most 600.0 but is 0"),
    ({"prompt": "x", "timeout_s": 601}, "timeout_s", "`timeout_s` must be greater than 0 and at most 600.0 but is 601"),
    ({"prompt": "x", "response_format": "b64"}, "response_format", "one of json, image but is 'b64'"),
    ({"prompt": "x", "response_format": "image", "stream": True}, "stream", "cannot be combined with an image"),
    (
        {"prompt": "x", "response_format": "image", "num_images_per_prompt": 2},
        "num_images_per_prompt",
        "an image response carries one image, but `num_images_per_prompt` is 2",
    ),
]


@pytest.mark.parametrize(("payload", "field", "message"), INVALID)
def test_invalid_requests_name_the_field_and_value(payload, field, message):
    with pytest.raises(InvalidRequest) as caught:
        parse_request(payload)
    assert message in caught.value.message
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("payload", "kind"), [([], "an array"), ("x", "a string"), (None, "null"), (3, "a number"), (True, "a boolean")]
)
def test_body_must_be_an_object(payload, kind):
    with pytest.raises(InvalidRequest, match=f"request body must be a JSON object but is {kind}"):
        parse_request(payload)


def test_optional_second_prompts_accept_null():
    request = parse_request({"prompt": "x", "prompt_2": None, "negative_prompt_2": None, "seed": None})
    assert request.prompt_2 is None and request.negative_prompt_2 is None and request.seed is None


def test_markdown_reference_lists_every_field_with_its_bounds():
    table = markdown_table(Limits(max_size=512), Defaults(width=64))
    for name in FIELDS:
        assert f"| `{name}` |" in table
    assert "multiple of 8, 64..512" in table
    assert "| `width` | integer | 64 |" in table


@pytest.mark.parametrize(
    ("accept", "body", "expected"),
    [
        (None, {"prompt": "x"}, {"prompt": "x"}),
        ("application/json", {"prompt": "x"}, {"prompt": "x"}),
        ("*/*", {"prompt": "x"}, {"prompt": "x"}),
        ("image/webp", {"prompt": "x"}, {"prompt": "x", "response_format": "image", "output_format": "webp"}),
        (
            "image/*",
            {"prompt": "x", "output_format": "jpeg"},
            {"prompt": "x", "output_format": "jpeg", "response_format": "image"},
        ),
        (
            "text/html, image/png;q=0.9",
            {"prompt": "x"},
            {"prompt": "x", "response_format": "image", "output_format": "png"},
        ),
    ],
)
def test_accept_header_selects_a_raw_image_response(accept, body, expected):
    assert negotiate(body, accept) == expected


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "output_format": "png"}, "output_format"),
        ({"prompt": "x", "response_format": "json"}, "response_format"),
    ],
)
def test_accept_header_conflicting_with_the_body_is_an_error(body, field):
    with pytest.raises(InvalidRequest) as caught:
        negotiate(body, "image/jpeg")
    assert caught.value.field == field and "`Accept: image/jpeg` asks for" in caught.value.message
