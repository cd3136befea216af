"""Prompts past 75 tokens (handler.model.text_encoding): a 2- and 3-chunk prompt makes diffusers' own image for
embeddings built by the documented chunking rule (independently, here); a short prompt's embeddings are
``encode_prompt``'s bit for bit; requests of 1, 2 and 3 chunks share a UNet forward (padding masked) and each
equals its solo image."""

from __future__ import annotations

import pytest
import torch

from handler.contract.parse import parse_request
from handler.model.text_encoding import encode_prompts
from tests.helpers import count_unet_forwards, make_engine, max_diff

WORDS = ["a red cat", "on the hill", "in the snow", "at night", "over the sea"]


def prompt_of(tokens_wanted: int) -> str:
    """A prompt of ``tokens_wanted`` tokens or a few more (phrases of the tiny tokenizer's whole words)."""
    from handler.model.tiny_model import build_clip_tokenizer

    tokenizer, phrases = build_clip_tokenizer(), []
    while len(tokenizer(" ".join(phrases), add_special_tokens=False).input_ids) < tokens_wanted:
        phrases.append(WORDS[len(phrases) % len(WORDS)])
    return " ".join(phrases)


def reference_embeds(pipeline, text: str, chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule, spelled out independently: per encoder, 75-token chunks as [BOS] + tokens + [EOS] + padding,
    each encoded alone; penultimate hidden states concatenated along the sequence, then across encoders; the
    pooled embedding of text_encoder_2's first chunk; missing chunks are the empty prompt's."""
    per_encoder, pooled = [], None
    for tokenizer, encoder in ((pipeline.tokenizer, pipeline.text_encoder),
                               (pipeline.tokenizer_2, pipeline.text_encoder_2)):  # fmt: skip
        ids = tokenizer(text, add_special_tokens=False).input_ids
        states = []
        for index in range(chunks):
            piece = ids[index * 75 : (index + 1) * 75]
            padded = [tokenizer.bos_token_id, *piece, tokenizer.eos_token_id]
            padded += [tokenizer.pad_token_id] * (77 - len(padded))
            output = encoder(torch.tensor([padded]), output_hidden_states=True)
            states.append(output.hidden_states[-2])
            if index == 0 and output[0].ndim == 2:
                pooled = output[0]
        per_encoder.append(torch.cat(states, dim=1))
    return torch.cat(per_encoder, dim=-1), pooled


def test_a_short_prompt_is_encode_prompts_own_embeddings_bit_for_bit(tiny_loaded, tiny_settings):
    pipeline = tiny_loaded.pipeline
    request = parse_request({"prompt": "a red cat on the hill", "negative_prompt": "blurry", "prompt_2": "at night",
                             "num_images_per_prompt": 2}, tiny_settings.limits, tiny_settings.defaults)  # fmt: skip
    ours = encode_prompts(pipeline, tiny_loaded.device, request, guidance=True)
    theirs = pipeline.encode_prompt(prompt="a red cat on the hill", prompt_2="at night", device=tiny_loaded.device,
                                    num_images_per_prompt=2, do_classifier_free_guidance=True,
                                    negative_prompt="blurry")  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


@pytest.mark.parametrize("chunks", [2, 3])
def test_a_long_prompt_makes_diffusers_image_from_the_chunked_embeddings(tiny_loaded, tiny_settings, chunks):
    pipeline, text = tiny_loaded.pipeline, prompt_of(75 * (chunks - 1) + 20)
    request = parse_request({"prompt": text, "seed": 7, "num_inference_steps": 4}, tiny_settings.limits,
                            tiny_settings.defaults)  # fmt: skip
    ours = make_engine(tiny_loaded).generate([request])[0][0]
    with torch.no_grad():
        embeds, pooled = reference_embeds(pipeline, text, chunks)
    assert embeds.shape[1] == 77 * chunks
    reference = pipeline(prompt_embeds=embeds, pooled_prompt_embeds=pooled, num_inference_steps=4,
                         guidance_scale=5.0, width=64, height=64,
                         generator=[torch.Generator("cpu").manual_seed(7)]).images[0]  # fmt: skip
    assert max_diff(ours, reference) <= 1


def test_a_short_negative_is_padded_with_empty_chunks_to_the_prompts_length(tiny_loaded, tiny_settings):
    pipeline, text = tiny_loaded.pipeline, prompt_of(100)
    request = parse_request({"prompt": text, "negative_prompt": "blurry", "seed": 3, "num_inference_steps": 4},
                            tiny_settings.limits, tiny_settings.defaults)  # fmt: skip
    ours = make_engine(tiny_loaded).generate([request])[0][0]
    with torch.no_grad():
        embeds, pooled = reference_embeds(pipeline, text, 2)
        negative, negative_pooled = reference_embeds(pipeline, "blurry", 2)
    reference = pipeline(prompt_embeds=embeds, pooled_prompt_embeds=pooled, negative_prompt_embeds=negative,
                         negative_pooled_prompt_embeds=negative_pooled, num_inference_steps=4, guidance_scale=5.0,
                         width=64, height=64, generator=[torch.Generator("cpu").manual_seed(3)]).images[0]  # fmt: skip
    assert max_diff(ours, reference) <= 1


def test_one_two_and_three_chunk_requests_share_each_forward_and_equal_their_solo_images(tiny_loaded, tiny_settings,
                                                                                         monkeypatch):  # fmt: skip
    bodies = [
        {"prompt": "a red cat", "seed": 1},
        {"prompt": prompt_of(100), "seed": 2, "negative_prompt": "blurry"},
        {"prompt": prompt_of(180), "seed": 3, "num_images_per_prompt": 2},
        {"prompt": "at night", "seed": 4, "negative_prompt": prompt_of(120)},  # the negative is the long one
    ]
    requests = [parse_request({**b, "num_inference_steps": 4}, tiny_settings.limits, tiny_settings.defaults)
                for b in bodies]  # fmt: skip
    solo = [make_engine(tiny_loaded).generate([request])[0] for request in requests]
    forwards = count_unet_forwards(monkeypatch, tiny_loaded)
    together = make_engine(tiny_loaded).generate(requests)
    assert len(forwards) == 4, forwards  # one UNet forward per step for all four
    for alone, shared in zip(solo, together, strict=True):
        assert all(max_diff(a, b) <= 1 for a, b in zip(alone, shared, strict=True))


def reference_weighted(pipeline, pieces: list[tuple[str, float]], chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A1111's emphasis, spelled out: each piece tokenized alone with its weight, 75-token chunks ("BREAK"
    starts one), each chunk encoded alone; its hidden states times the weights, then rescaled to the chunk's
    original mean; the pooled embedding unweighted, from the first chunk."""
    per_encoder, pooled = [], None
    for tokenizer, encoder in ((pipeline.tokenizer, pipeline.text_encoder),
                               (pipeline.tokenizer_2, pipeline.text_encoder_2)):  # fmt: skip
        layout = [[]]
        for text, weight in pieces:
            if text == "BREAK":
                layout.append([])
                continue
            for token in tokenizer(text, add_special_tokens=False).input_ids:
                if len(layout[-1]) == 75:
                    layout.append([])
                layout[-1].append((token, weight))
        layout += [[]] * (chunks - len(layout))
        states = []
        for index, chunk in enumerate(layout):
            ids = [tokenizer.bos_token_id, *(t for t, _ in chunk), tokenizer.eos_token_id]
            weights = torch.tensor([1.0, *(w for _, w in chunk), 1.0] + [1.0] * (77 - len(ids)))
            ids += [tokenizer.pad_token_id] * (77 - len(ids))
            output = encoder(torch.tensor([ids]), output_hidden_states=True)
            z = output.hidden_states[-2]
            original = z.mean()
            z = z * weights[None, :, None]
            states.append(z * (original / z.mean()))
            if index == 0 and output[0].ndim == 2:
                pooled = output[0]
        per_encoder.append(torch.cat(states, dim=1))
    return torch.cat(per_encoder, dim=-1), pooled


def test_a1111_weights_make_diffusers_image_from_the_emphasised_embeddings(tiny_loaded, tiny_settings):
    text = "a (red cat:1.4) on the [hill] BREAK ((at night))"
    pieces = [("a ", 1.0), ("red cat", 1.4), (" on the ", 1.0), ("hill", 1 / 1.1), ("", 1.0), ("BREAK", -1),
              ("", 1.0), ("at night", 1.21)]  # fmt: skip
    request = parse_request({"prompt": text, "prompt_syntax": "a1111", "seed": 5, "num_inference_steps": 4},
                            tiny_settings.limits, tiny_settings.defaults)  # fmt: skip
    ours = make_engine(tiny_loaded).generate([request])[0][0]
    with torch.no_grad():
        embeds, pooled = reference_weighted(tiny_loaded.pipeline, pieces, 2)
    reference = tiny_loaded.pipeline(prompt_embeds=embeds, pooled_prompt_embeds=pooled, num_inference_steps=4,
                                     guidance_scale=5.0, width=64, height=64,
                                     generator=[torch.Generator("cpu").manual_seed(5)]).images[0]  # fmt: skip
    assert max_diff(ours, reference) <= 1
    plain = parse_request({"prompt": text, "seed": 5, "num_inference_steps": 4}, tiny_settings.limits,
                          tiny_settings.defaults)  # fmt: skip
    assert max_diff(ours, make_engine(tiny_loaded).generate([plain])[0][0]) > 1  # the weights do reach the UNet


def test_weighted_plain_and_long_requests_in_one_batch_equal_their_solo_images(tiny_loaded, tiny_settings):
    bodies = [
        {"prompt": "a (red cat:1.5)", "prompt_syntax": "a1111", "seed": 1},
        {"prompt": "a (red cat:1.5)", "seed": 2},  # plain: the parentheses are text
        {"prompt": prompt_of(120), "prompt_syntax": "a1111", "negative_prompt": "[blurry]", "seed": 3},
        {"prompt": "at night BREAK over the sea", "prompt_syntax": "a1111", "seed": 4},
    ]
    requests = [parse_request({**b, "num_inference_steps": 4}, tiny_settings.limits, tiny_settings.defaults)
                for b in bodies]  # fmt: skip
    solo = [make_engine(tiny_loaded).generate([request])[0][0] for request in requests]
    together = [images[0] for images in make_engine(tiny_loaded).generate(requests)]
    assert all(max_diff(a, b) <= 1 for a, b in zip(solo, together, strict=True))


def test_malformed_weighted_prompts_are_400s_with_the_position_beside_good_requests(core):
    import json

    bad = ["a (red cat", "stray ) here", "(cat:9)", "x:1.2)", "((((cat:2.9))))", "[unclosed", "(a:1.2.3)"]
    bodies = [{"prompt": "a red cat", "seed": 1, "prompt_syntax": "a1111"}]
    bodies += [{"prompt": "fine", "negative_prompt": text, "prompt_syntax": "a1111"} for text in bad]
    bodies += [{"prompt": "(a red cat)", "seed": 2}]  # plain: parentheses are text, not an error
    replies = core.handle([{"body": json.dumps(body).encode()} for body in bodies])
    assert [r.status for r in replies] == [200] + [400] * len(bad) + [200]
    for reply in replies[1:-1]:
        error = reply.json()["error"]
        assert error["field"] == "negative_prompt" and " at position " in error["message"], error
