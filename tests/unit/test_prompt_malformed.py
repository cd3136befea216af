"""Malformed prompts, 20+ of them across the syntaxes, the chunk limit and the text itself, each a 400 naming the
field and where it went wrong, sent in one batch with good requests that all succeed (the core's own batch
path; the real TorchServe's: tests/integration/test_server.py)."""

from __future__ import annotations

import json

import pytest

from tests.unit.test_text_encoding import prompt_of

BAD_A1111 = [
    ("a (red cat", "never closed at position 2"),
    ("stray ) here", "no '(' before it"),
    ("(cat:9)", "outside 0..3 at position 4"),
    ("(cat:1000000000)", "weight 1e+09 outside 0..3 at position 4"),
    ("x:1.2)", "outside parentheses at position 1"),
    ("((((cat:2.9))))", "over 3"),
    ("[unclosed", "never closed at position 0"),
    ("(a:1.2.3)", "not a number"),
    ("(cat:-0.5)", "outside 0..3"),
    ("BREAK", "only BREAK"),
    (" BREAK  BREAK ", "only BREAK"),
]
BAD_COMPEL = [
    ("a (red cat", "never closed at position 2"),
    ("a cat)", "no '(' before it"),
    ("(cat)1e9", "weight '1e9' outside 0..3 at position 5"),
    ("(cat)4", "outside 0..3 at position 5"),
    ("cat++++++++++++", "outside 0..3"),
    ('("a cat", "a dog).blend(0.5, 0.5)', "never closed"),
    ('("a", "b").and(1, 9)', ".and() weight 9"),
    ("a cat.swap(dog)", ".swap()"),
    ('("a", "b").blend(5, 1)', ".blend() weight"),
]
BAD_TEXT = [  # any syntax
    ({"prompt": "a " * 750}, "prompt", "is 750 tokens in 10 chunks"),
    ({"prompt": " BREAK ".join(["a red cat"] * 10), "prompt_syntax": "a1111"}, "prompt", "10 chunks"),
    ({"prompt": "ok", "negative_prompt": "a \ud800 cat"}, "negative_prompt", "lone surrogate \\ud800 at character 2"),
]


def bodies() -> list[tuple[dict, str, str]]:
    cases = [({"prompt": "fine", "negative_prompt": text, "prompt_syntax": "a1111"}, "negative_prompt", message)
             for text, message in BAD_A1111]  # fmt: skip
    cases += [({"prompt": text, "prompt_syntax": "compel"}, "prompt", message) for text, message in BAD_COMPEL]
    return cases + BAD_TEXT


def test_twenty_plus_malformed_prompts_are_400s_naming_field_and_place_among_good_requests(core):
    pytest.importorskip("compel")
    bad = bodies()
    assert len(bad) >= 20
    good = [{"prompt": "a (red cat:1.2)", "prompt_syntax": "a1111", "seed": 1},
            {"prompt": "a red+ cat", "prompt_syntax": "compel", "seed": 2},
            {"prompt": prompt_of(200), "seed": 3}]  # fmt: skip
    rows = [{"body": json.dumps({**body, "num_inference_steps": 2}).encode()} for body in good]
    rows += [{"body": json.dumps(body).encode()} for body, _, _ in bad]
    rows.append({"body": b'{"prompt": "a \xff cat"}'})  # not UTF-8 at all
    replies = core.handle(rows)
    assert [r.status for r in replies] == [200] * len(good) + [400] * (len(bad) + 1)
    for reply, (body, field, message) in zip(replies[len(good) :], bad, strict=False):
        error = reply.json()["error"]
        assert error["field"] == field and message in error["message"], (body, error)
        assert any(where in error["message"] for where in (" at position ", " chunks", " at character ")), error
    assert "byte 0xff at position 14" in replies[-1].json()["error"]["message"]


def test_a_number_after_a_space_is_compels_text_not_a_weight():
    pytest.importorskip("compel")
    from handler.contract.prompt_syntax import weighted_pieces

    assert weighted_pieces("a (photo) 1990s style", "compel") == [[[("a photo 1990s style", 1.0)]]]
    assert weighted_pieces("(photo)2 cats", "compel") == [[[("photo", 2.0), ("cats", 1.0)]]]
    assert weighted_pieces("(cat)-1", "compel") == [[[("cat", 0.9), ("1", 1.0)]]]  # `-` weighs, 1 is text
