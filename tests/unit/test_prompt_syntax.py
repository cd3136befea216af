"""A1111's prompt-weighting syntax (handler.contract.prompt_syntax) against A1111's published parser behaviour:
the doctests of AUTOMATIC1111's modules/prompt_parser.py ``parse_prompt_attention`` (cited per case), the
rules its wiki states (https://github.com/AUTOMATIC1111/stable-diffusion-webui/wiki/Features#attentionemphasis:
``(word)`` x1.1, ``[word]`` /1.1, ``(word:1.5)``, nesting multiplies, ``\\(`` is a literal, ``BREAK``), and
where we differ on purpose: malformed text is a 400 naming the position instead of being forgiven."""

import pytest

from handler.contract.errors import InvalidRequest
from handler.contract.prompt_syntax import BREAK, parse_a1111

CASES = [
    # A1111's doctests (modules/prompt_parser.py), balanced ones: the same pieces and weights.
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    # The wiki's rules.
    ("a (word:1.5) here", [("a ", 1.0), ("word", 1.5), (" here", 1.0)]),
    ("[word]", [("word", 1 / 1.1)]),
    ("((word))", [("word", 1.1 * 1.1)]),
    ("(((word)))", [("word", 1.1**3)]),
    ("[[word]]", [("word", 1 / 1.1 / 1.1)]),
    ("((word:1.3))", [("word", 1.3 * 1.1)]),
    ("(a (b) c)", [("a ", 1.1), ("b", 1.21), (" c", 1.1)]),
    ("(word:0.5)", [("word", 0.5)]),
    ("(word:0)", [("word", 0.0)]),
    ("(word: 1.2 )", [("word", 1.2)]),
    ("(word:.5)", [("word", 0.5)]),
    ("a [b] (c)", [("a ", 1.0), ("b", 1 / 1.1), (" ", 1.0), ("c", 1.1)]),
    ("[(word)]", [("word", 1.0)]),
    ("a: b", [("a: b", 1.0)]),  # a colon without a weight and ')' is text
    ("\\\\ backslash", [("\\ backslash", 1.0)]),
    ("", [("", 1.0)]),
    ("a BREAK b", [("a", 1.0), (BREAK, -1.0), ("b", 1.0)]),
    ("(a BREAK b)", [("a", 1.1), (BREAK, -1.1), ("b", 1.1)]),  # A1111 weighs the BREAK marker too, harmlessly
    ("aBREAKb", [("aBREAKb", 1.0)]),  # a word boundary is needed
    ("(x:1.1)(y:1.1)", [("xy", 1.1)]),  # equal neighbours merge
    ("\\(not weighted:1.5\\)", [("(not weighted:1.5)", 1.0)]),
    ("(word:1e9)", [("word:1e9", 1.1)]),  # 1e9 is not A1111's number syntax: text, in one ( )
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_pieces_and_weights_are_a1111s(text, expected):
    pieces = parse_a1111(text)
    assert [p.text for p in pieces] == [t for t, _ in expected]
    assert [p.weight for p in pieces] == pytest.approx([w for _, w in expected])


MALFORMED = [
    ("(unbalanced", "never closed", 0),  # A1111's doctest weighs it 1.1: we refuse
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", "never closed", 2),  # A1111's doctest: one ( open
    ("[unclosed", "never closed", 0),
    ("stray ) paren", "no '(' before it", 6),
    ("stray ] bracket", "no '[' before it", 6),
    ("word:1.3)", "outside parentheses", 4),
    ("(word:5)", "outside 0..3", 5),
    ("(word:-1)", "outside 0..3", 5),
    ("(word:1000000000)", "outside 0..3", 5),
    ("(word:1.2.3)", "not a number", 5),
    ("((((word:2.9))))", "over 3", 4),
]


@pytest.mark.parametrize(("text", "message", "position"), MALFORMED)
def test_malformed_syntax_is_an_invalid_request_naming_the_position(text, message, position):
    with pytest.raises(InvalidRequest) as caught:
        parse_a1111(text, field="negative_prompt")
    assert caught.value.field == "negative_prompt" and message in caught.value.message
    assert f"at position {position}" in caught.value.message, caught.value.message
