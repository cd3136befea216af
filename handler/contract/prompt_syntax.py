"""A1111's prompt-weighting syntax, parsed torch-free: ``(word)`` x1.1, ``[word]`` /1.1, ``(word:1.3)``,
nesting multiplies, ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal, ``BREAK`` ends a chunk.

The grammar and arithmetic are AUTOMATIC1111's ``modules/prompt_parser.parse_prompt_attention`` (its regex and
its merge of neighbouring pieces of equal weight), with one difference by design: A1111 forgives malformed
text (an unclosed ``(`` weighs everything after it, a stray ``)`` or ``:1.3)`` is read as text); here each is
an InvalidRequest naming the field and the position, as every other malformed input is. Weights are bounded
to ``0..MAX_WEIGHT``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from handler.contract.errors import InvalidRequest

PROMPT_SYNTAXES = ("plain", "a1111", "compel")
TEXT_FIELDS = ("prompt", "negative_prompt", "prompt_2", "negative_prompt_2")
ROUND, SQUARE = 1.1, 1 / 1.1  # A1111's multipliers for ( ) and [ ]
MAX_WEIGHT = 3.0
BREAK = "BREAK"

# modules/prompt_parser.py's re_attention, token for token.
ATTENTION = re.compile(
    r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""",
    re.X,
)
BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*", re.S)


@dataclass(frozen=True)
class Piece:
    """A run of text and its weight; ``text == BREAK`` with weight -1 marks a chunk boundary."""

    text: str
    weight: float

    @property
    def is_break(self) -> bool:
        return self.weight == -1 and self.text == BREAK


def parse_a1111(text: str, field: str = "prompt") -> tuple[Piece, ...]:
    """``text`` as weighted pieces, A1111's way (see the module doc), or InvalidRequest at the first error.

    Args:
        text (`str`): the prompt.
        field (`str`, defaults to "prompt"): the request field, for error messages.
    """
    pieces: list[list] = []
    round_open: list[tuple[int, int]] = []  # (index into pieces, position in text)
    square_open: list[tuple[int, int]] = []

    def fail(message: str, position: int) -> InvalidRequest:
        return InvalidRequest(f"`{field}` {message} at position {position}", field=field, value=text)

    def multiply(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in ATTENTION.finditer(text):
        token, weight, at = match.group(0), match.group(1), match.start()
        if token.startswith("\\"):  # an escaped character is itself; a lone backslash is dropped (A1111's rule)
            pieces.append([token[1:], 1.0])
        elif token == "(":
            round_open.append((len(pieces), at))
        elif token == "[":
            square_open.append((len(pieces), at))
        elif weight is not None:
            if not round_open:
                raise fail(f"has a weight {token.strip()!r} outside parentheses", at)
            try:
                value = float(weight)
            except ValueError:
                raise fail(f"has a weight {weight!r} that is not a number", at) from None
            if not 0 <= value <= MAX_WEIGHT:
                raise fail(f"has a weight {value:g} outside 0..{MAX_WEIGHT:g}", at)
            multiply(round_open.pop()[0], value)
        elif token == ")":
            if not round_open:
                raise fail("has a ')' with no '(' before it (write \\) for the character)", at)
            multiply(round_open.pop()[0], ROUND)
        elif token == "]":
            if not square_open:
                raise fail("has a ']' with no '[' before it (write \\] for the character)", at)
            multiply(square_open.pop()[0], SQUARE)
        else:
            for index, part in enumerate(BREAK_WORD.split(token)):
                if index:
                    pieces.append([BREAK, -1.0])
                pieces.append([part, 1.0])
    if round_open or square_open:
        position = min(at for _, at in round_open + square_open)
        raise fail(f"has a {text[position]!r} that is never closed", position)
    if not pieces:
        pieces = [["", 1.0]]
    if any(p[0] == BREAK and p[1] == -1 for p in pieces) and not any(p[0].strip() for p in pieces if p[1] != -1):
        raise fail("is only BREAK, with no text to encode", 0)
    merged: list[list] = [pieces[0]]  # neighbours of equal weight become one piece, as A1111 merges them
    for piece in pieces[1:]:
        if piece[1] == merged[-1][1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    for text_, weight in merged:
        if weight > MAX_WEIGHT and text_ != BREAK:
            raise fail(f"weighs {text_!r} {weight:g} (nested), over {MAX_WEIGHT:g}", text.find(text_))
    return tuple(Piece(text_, weight) for text_, weight in merged)


def weighted_pieces(text: str, syntax: str, field: str = "prompt") -> list[list[list[tuple[str, float]]]]:
    """``text`` read in ``syntax``, for token counts and the reply's echo: per conjunct (compel's ``.and()``;
    otherwise one), per blended alternative (compel's ``.blend()``; otherwise one), the (text, weight) pieces in
    order, ``(BREAK, -1)`` marking a chunk boundary. InvalidRequest names the field and the position.

    Args:
        text (`str`): the text of one request field.
        syntax (`str`): one of :data:`PROMPT_SYNTAXES`.
        field (`str`, defaults to "prompt"): the request field, for error messages.
    """
    if syntax == "plain":
        return [[[(text, 1.0)]]]
    if syntax == "a1111":
        return [[[(piece.text, piece.weight) for piece in parse_a1111(text, field)]]]
    from handler.contract.compel_syntax import parse_compel

    return [list(alternatives) for alternatives in parse_compel(text, field)]


def understood(request: Any) -> dict[str, Any]:
    """The reply's echo of what the syntax made of each text: ``{field: [[text, weight], ...]}`` (the first
    alternative of each conjunct, conjuncts in order; ``["BREAK", -1]`` at A1111's chunk breaks); empty for
    ``plain``."""
    if request.prompt_syntax == "plain":
        return {}
    echo = {}
    for name in TEXT_FIELDS:
        text = getattr(request, name)
        if text:
            conjuncts = weighted_pieces(text, request.prompt_syntax, name)
            pieces = [piece for alternatives in conjuncts for piece in alternatives[0] if piece[0]]
            echo[name] = [[text_, round(weight, 4)] for text_, weight in pieces]
    return echo
