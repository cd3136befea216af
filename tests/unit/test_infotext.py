"""The image's recipe in the image (handler.contract.a1111.infotext, handler.wire.encode): written as A1111 writes
it (PNG ``parameters`` text; JPEG/WebP EXIF UserComment, read here with piexif as A1111's
``images.read_info_from_image`` reads it) and read back by A1111's own infotext parser (ported below), every
recipe field of the request comes back; ``embed_parameters: false`` writes nothing; the input images and the
transport fields never go in."""

from __future__ import annotations

import io
import json
import re

import piexif
import piexif.helper
import pytest
from PIL import Image

from handler.contract.a1111 import A1111_KEYS, A1111_SAMPLERS, A1111_SCHEDULES, NOT_RECIPE, infotext
from handler.contract.parse import parse_request
from handler.contract.settings import HandlerSettings
from handler.wire.encode import encode_image
from tests.images import b64, picture

# AUTOMATIC1111 modules/infotext_utils.py: re_param_code and parse_generation_parameters (prompt lines, the
# "Negative prompt:" line, then Key: value pairs, quoted values unquoted as JSON).
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_generation_parameters(text: str) -> dict[str, str]:
    *lines, last = text.strip().split("\n")
    if len(RE_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, done_with_prompt = "", "", False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt, line = True, line[16:].strip()
        if done_with_prompt:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    result = {"Prompt": prompt, "Negative prompt": negative}
    for key, value in RE_PARAM.findall(last):
        if value[:1] == '"' and value[-1:] == '"':
            value = json.loads(value)
        result[key] = value
    return result


def request_fields(parsed: dict[str, str], request) -> dict:
    """The request fields an infotext names, typed as the request has them."""
    ours = {key: name for name, key in A1111_KEYS.items()}
    fields: dict = {"prompt": parsed.pop("Prompt"), "negative_prompt": parsed.pop("Negative prompt")}
    width, height = parsed.pop("Size").split("x")
    fields.update(width=int(width), height=int(height))
    for key, value in parsed.items():
        name = ours.get(key, key)
        if name == "sampler":
            value = A1111_SAMPLERS.get(value, None if value == "model default" else value)
        elif name == "schedule":
            value = next(schedule for label, schedule in A1111_SCHEDULES.values() if label == value)
        elif key == "LoRAs":
            name, value = "loras", [(n, float(s)) for n, s in (item.split(":") for item in value.split(", "))]
        elif key.startswith("Model"):
            continue
        elif not isinstance(getattr(request, name), str):
            value = json.loads(value)
            value = tuple(value) if isinstance(value, list) else value
        fields[name] = value
    return fields


def recipe_of(request) -> dict:
    values = {name: getattr(request, name) for name in request.__dataclass_fields__}
    return {n: v for n, v in values.items() if n not in NOT_RECIPE and v is not None} | {
        "prompt": request.prompt, "negative_prompt": request.negative_prompt, "width": request.width,
        "height": request.height, **({"loras": list(request.loras)} if request.loras else {}),
    }  # fmt: skip


def read_back(data: bytes) -> str | None:
    """The recipe text in an image, read as A1111 reads it."""
    image = Image.open(io.BytesIO(data))
    if image.format == "PNG":
        return image.info.get("parameters")
    if "exif" not in image.info:
        return None
    comment = piexif.load(image.info["exif"]).get("Exif", {}).get(piexif.ExifIFD.UserComment)
    return None if comment is None else piexif.helper.UserComment.load(comment)


SETTINGS = HandlerSettings()
BODIES = [
    {
        "prompt": "a red cat, on a hill: at night",
        "negative_prompt": "blurry\nlow quality",
        "seed": 42,
        "num_inference_steps": 20,
        "guidance_scale": 6.5,
        "sampler": "dpmpp_2m",
        "schedule": "karras",
        "width": 512,
        "height": 768,
    },
    {
        "prompt": "a (red cat:1.3) BREAK snow",
        "prompt_syntax": "a1111",
        "prompt_2": "watercolour, soft",
        "negative_prompt_2": "text",
        "sampler": "ddim",
        "eta": 0.3,
        "schedule": "trailing",
        "original_size": [1024, 2048],
        "crops_coords_top_left": [8, 16],
        "target_size": [768, 512],
        "seed": 7,
    },
    {"prompt": 'ünïcödé 猫 – “quotes” "and" \\ slashes', "seed": 0, "guidance_scale": 1.0},
]


@pytest.mark.parametrize("output_format", ["png", "jpeg", "webp"])
@pytest.mark.parametrize("body", BODIES, ids=["a1111-keys", "our-keys", "unicode"])
def test_the_recipe_round_trips_through_the_file_and_a1111s_parser(body, output_format):
    request = parse_request({**body, "output_format": output_format})
    text = infotext(request.parameters(), request.seed, {"name": "tiny-sdxl", "hash": "0123456789"})
    data = encode_image(picture(64, 64), output_format, SETTINGS, text)
    assert read_back(data) == text
    parsed = parse_generation_parameters(text)
    assert parsed["Model"] == "tiny-sdxl" and parsed["Model hash"] == "0123456789"
    assert request_fields(parsed, request) == recipe_of(request)


def test_image_i_carries_its_own_seed_and_loras_come_back_with_their_scales():
    request = parse_request({"prompt": "a cat", "seed": 10, "num_images_per_prompt": 3})
    seeds = [parse_generation_parameters(infotext(request.parameters(), request.seed + i))["Seed"] for i in range(3)]
    assert seeds == ["10", "11", "12"]
    parameters = {**request.parameters(), "loras": [{"name": "ink", "scale": 0.8}, {"name": "film", "scale": -0.5}]}
    assert parse_generation_parameters(infotext(parameters, 10))["LoRAs"] == "ink:0.8, film:-0.5"


def test_input_images_and_delivery_fields_never_go_in():
    image = b64(picture(64, 64, seed=1))
    request = parse_request({"prompt": "a cat", "image": image, "strength": 0.6, "mask_image": b64(picture(64, 64)),
                             "seed": 1, "output_format": "webp", "stream": True})  # fmt: skip
    text = infotext(request.parameters(), 1)
    parsed = parse_generation_parameters(text)
    assert parsed["Denoising strength"] == "0.6"
    assert image[:40] not in text and request.image.sha256 not in text
    assert not {"image", "mask_image", "output_format", "stream", "response_format", "embed_parameters"} & set(parsed)


def test_embed_parameters_false_writes_no_recipe():
    for output_format in ("png", "jpeg", "webp"):
        assert read_back(encode_image(picture(64, 64), output_format, SETTINGS, None)) is None
