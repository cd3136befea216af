"""Weighted and long prompts as requests: ``prompt_syntax: compel`` makes diffusers' own image from compel's
``CompelForSDXL`` embeddings; plain, A1111 and compel prompts of 1-3 chunks, a LoRA row and an img2img row share
each UNet forward, in static batches and in a continuous loop they join at different steps, and each image is
its solo one; the reply echoes the weights understood; compel's syntax is checked without torch."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest
import torch

from handler.contract.parse import parse_request
from handler.contract.settings import CatalogueLora
from handler.model.loading import load_pipeline
from handler.runtime.core import Core
from tests.helpers import Frontend, body_pixels, make_engine, make_lora, max_diff
from tests.images import b64, picture
from tests.unit.test_text_encoding import prompt_of

pytest.importorskip("compel")


def test_compel_syntax_makes_diffusers_image_from_compels_own_sdxl_embeddings(tiny_loaded, tiny_settings):
    from compel import CompelForSDXL

    text, negative = "a red++ cat on the (hill)0.8, " + prompt_of(90), "(blurry)1.3 snow-"
    request = parse_request(
        {"prompt": text, "negative_prompt": negative, "prompt_syntax": "compel", "seed": 5, "num_inference_steps": 4},
        tiny_settings.limits,
        tiny_settings.defaults,
    )
    ours = make_engine(tiny_loaded).generate([request])[0][0]
    pipeline = tiny_loaded.pipeline
    with torch.no_grad():
        made = CompelForSDXL(pipeline)(main_prompt=text, negative_prompt=negative)
    assert made.embeds.shape[1] > 77  # a long prompt: compel's chunks
    reference = pipeline(
        prompt_embeds=made.embeds,
        pooled_prompt_embeds=made.pooled_embeds,
        negative_prompt_embeds=made.negative_embeds,
        negative_pooled_prompt_embeds=made.negative_pooled_embeds,
        num_inference_steps=4,
        guidance_scale=5.0,
        width=64,
        height=64,
        generator=[torch.Generator("cpu").manual_seed(5)],
    ).images[0]
    assert max_diff(ours, reference) <= 1
    plain = parse_request({"prompt": text, "negative_prompt": negative, "seed": 5, "num_inference_steps": 4},
                          tiny_settings.limits, tiny_settings.defaults)  # fmt: skip
    assert max_diff(ours, make_engine(tiny_loaded).generate([plain])[0][0]) > 1  # the weights reach the UNet


@pytest.mark.parametrize("words", [60, 90, 140, 200])
def test_compels_chunk_count_is_known_at_parse_without_encoding(tiny_loaded, words):
    """compel cuts long text at sentence, phrase or word ends: the contract counts its chunks the same way
    (handler.contract.compel_syntax.compel_chunk_count), so max_prompt_chunks holds before any work."""
    from compel import CompelForSDXL

    from handler.contract.prompts import chunk_total

    vocabulary = ["a red cat", "on the hill.", "in the snow,", "at night;", "over the sea"]
    text = " ".join(vocabulary[i % 5] for i in range(words // 3)) + " (warm light)1.2 sun+"
    pipeline = tiny_loaded.pipeline
    with torch.no_grad():
        made = CompelForSDXL(pipeline)(main_prompt=text)
    counted = max(chunk_total(t, text, "compel")[1] for t in (pipeline.tokenizer, pipeline.tokenizer_2))
    assert made.embeds.shape[1] == 77 * counted


def test_the_reply_echoes_the_weights_each_syntax_understood(core):
    bodies = [
        {"prompt": "a (red cat:1.3) [hill]", "negative_prompt": "blurry BREAK snow", "prompt_syntax": "a1111"},
        {"prompt": "a red++ cat (on the hill)0.5", "prompt_syntax": "compel"},
        {"prompt": "a (red cat:1.3)"},
    ]
    replies = core.handle([{"body": json.dumps({**b, "num_inference_steps": 2}).encode()} for b in bodies])
    echoes = [reply.json()["parameters"].get("prompt_weights") for reply in replies]
    assert echoes[0] == {
        "prompt": [["a ", 1.0], ["red cat", 1.3], [" ", 1.0], ["hill", round(1 / 1.1, 4)]],
        "negative_prompt": [["blurry", 1.0], ["BREAK", -1.0], ["snow", 1.0]],
    }
    assert echoes[1] == {"prompt": [["a", 1.0], ["red", 1.21], ["cat", 1.0], ["on the hill", 0.5]]}
    assert echoes[2] is None  # plain: nothing to understand


BODIES = [
    {"prompt": "a red cat", "seed": 1},
    {"prompt": prompt_of(200), "prompt_syntax": "a1111", "negative_prompt": "(blurry:1.4)", "seed": 2},
    {"prompt": "(" + prompt_of(100) + ")1.2 snow++", "prompt_syntax": "compel", "seed": 3},
    {"prompt": "a (red cat:0.7) BREAK at night", "prompt_syntax": "a1111", "loras": [{"name": "ink"}], "seed": 4},
    {"prompt": prompt_of(80), "image": "IMAGE", "strength": 0.75, "seed": 6},
]


@pytest.fixture(scope="module")
def lora_core(tiny_model_dir, tiny_settings, tmp_path_factory):
    path = make_lora(tmp_path_factory.mktemp("loras") / "ink", seed=1)
    limits = tiny_settings.limits.__class__(**{**tiny_settings.limits.__dict__, "catalogue": (("ink", 0.8),)})
    settings = tiny_settings.with_changes(lora_catalogue={"ink": CatalogueLora(path, scale=0.8)}, limits=limits)
    counter = itertools.count(1000)

    def load():  # one pipeline per core: a core's catalogue loads its LoRAs into its pipeline
        return load_pipeline(str(tiny_model_dir), tiny_settings)

    return Core(load(), settings, seed_source=lambda: next(counter)), load, settings


def bodies(steps: int = 4) -> list[dict]:
    image = b64(picture(64, 64, seed=3))
    return [{**b, "num_inference_steps": steps, **({"image": image} if "image" in b else {})} for b in BODIES]


def test_mixed_lengths_syntaxes_a_lora_and_img2img_in_one_batch_each_equal_their_solo_images(lora_core):
    core, _, _ = lora_core
    rows = [{"body": json.dumps(body).encode()} for body in bodies()]
    solo = [body_pixels(core.handle([row])[0].json()) for row in rows]
    together = core.handle(rows)
    assert {reply.json()["batch"]["group_requests"] for reply in together} == {len(rows)}, "not one shared batch"
    for alone, reply in zip(solo, together, strict=True):
        assert abs(body_pixels(reply.json()) - alone).max() <= 1


def test_the_same_requests_joining_a_continuous_loop_at_different_steps_equal_their_solo_images(lora_core):
    core, load, settings = lora_core
    continuous = Core(load(), settings.with_changes(continuous=True, steps_per_call=1, overlap_side_work=False))
    frontend = Frontend(continuous, batch_size=len(BODIES))
    requests = bodies(steps=5)
    solo = [body_pixels(core.handle([{"body": json.dumps(body).encode()}])[0].json()) for body in requests]
    responses = []
    for body in requests:  # one joins per call: each joins the loop at another step of those in it
        responses.append(frontend.submit(body))
        frontend.call()
    frontend.run_until_idle()
    assert [r.status for r in responses] == [200] * len(responses), [r.json().get("error") for r in responses]
    joined = [response.json()["batch"]["joined_call"] for response in responses]
    assert joined == sorted(set(joined)), joined
    for alone, response in zip(solo, responses, strict=True):
        assert response.status == 200 and abs(body_pixels(response.json()) - alone).max() <= 1


def test_compel_syntax_is_checked_without_torch():
    script = (
        "import sys\n"
        "from handler.contract.parse import parse_request\n"
        "r = parse_request({'prompt': 'a cat++ (on a mat)0.5', 'prompt_syntax': 'compel'})\n"
        "assert r.parameters()['prompt_weights']['prompt'][1] == ['cat', 1.21], r.parameters()\n"
        "assert 'torch' not in sys.modules and 'compel' not in sys.modules, 'torch or compel imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
