"""The ``compel`` library's prompt syntax, checked torch-free: ``word+`` x1.1 per ``+``, ``word-`` x0.9 per ``-``,
``(words)1.3``, ``("a", "b").blend(0.7, 0.3)``, ``("a", "b").and()``; compel's own parser reads it.

compel's ``prompt_parser`` is pure Python (pyparsing) but its package imports torch and diffusers, so the module
is loaded from the installed compel by file (:func:`compel_parser`): the job gateway checks compel prompts
without torch (``pip install --no-deps compel pyparsing`` there). compel forgives malformed text (an unclosed
``(`` becomes text, ``(cat)1e9`` becomes ``cat e9``); here, as for every other input, it is a 400 naming the
field and the position: unbalanced parentheses or quotes, weights outside ``0..MAX_WEIGHT``, ``.swap()``
(cross-attention control, which this engine does not run).
"""

from __future__ import annotations

import importlib.util
import re
from functools import cache
from typing import Any

from handler.contract.errors import InvalidRequest

MAX_WEIGHT = 3.0
INSTALL_HINT = (
    "pip install 'sdxl-torchserve[compel]' (a torch-free job gateway: pip install --no-deps compel pyparsing)"
)
# ")" then a number: compel's explicit weight. The exponent form is caught so that `(cat)1e9` is refused,
# not read as the text "cat e9".
EXPLICIT_WEIGHT = re.compile(r"\)((?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)")  # compel: no space before it


# compel's default long-text split (SplitLongTextMode.SENTENCES, falling back to PHRASES, then WORDS): a chunk
# ends after the last sentence end, else phrase end, else word end among its first 75 tokens.
SPLIT_TOKENS = (
    lambda t: t == ".</w>",
    lambda t: t in (".</w>", ",</w>", ";</w>", ":</w>"),
    lambda t: t.endswith("</w>"),
)


@cache
def compel_parser() -> Any:
    """compel's ``prompt_parser`` module, loaded without the compel package (and so without torch), or None
    when compel is not installed."""
    spec = importlib.util.find_spec("compel")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    path = f"{next(iter(spec.submodule_search_locations))}/prompt_parser.py"
    module_spec = importlib.util.spec_from_file_location("sdxl_compel_prompt_parser", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _structure(text: str, fail: Any) -> None:
    """Parentheses and double quotes balance (a backslash escapes the next character)."""
    opened: list[int] = []
    quote: int | None = None
    escaped = False
    for at, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quote = at if quote is None else None
        elif quote is not None:
            continue
        elif char == "(":
            opened.append(at)
        elif char == ")":
            if not opened:
                raise fail("has a ')' with no '(' before it (write \\) for the character)", at)
            opened.pop()
    if quote is not None:
        raise fail("has a '\"' that is never closed", quote)
    if opened:
        raise fail("has a '(' that is never closed", opened[0])


def parse_compel(text: str, field: str = "prompt") -> tuple[list[list[tuple[str, float]]], ...]:
    """``text`` as compel reads it: per conjunct (``.and()`` parts, usually one), the alternatives it blends
    (usually one), each a list of (text, weight) fragments. InvalidRequest at the first error.

    Args:
        text (`str`): the prompt.
        field (`str`, defaults to "prompt"): the request field, for error messages.
    """

    def fail(message: str, position: int) -> InvalidRequest:
        return InvalidRequest(f"`{field}` {message} at position {position}", field=field, value=text)

    parser = compel_parser()
    if parser is None:
        raise InvalidRequest(
            f"`prompt_syntax` 'compel' needs the compel package where requests are checked: {INSTALL_HINT}",
            field="prompt_syntax",
            value="compel",
        )
    # 1. Structure and explicit weights, which compel would silently read as text.
    _structure(text, fail)
    for match in EXPLICIT_WEIGHT.finditer(text):
        value = float(match.group(1))
        if not 0 <= value <= MAX_WEIGHT:
            raise fail(f"has a weight {match.group(1)!r} outside 0..{MAX_WEIGHT:g}", match.start(1))
    if ".swap(" in text:
        raise fail("uses .swap() (cross-attention control), which this server does not run", text.index(".swap("))
    # 2. compel's parser.
    try:
        conjunction = parser.PromptParser().parse_conjunction(text)
    except Exception as exc:  # pyparsing's ParseException carries the position
        raise fail(f"is not compel syntax ({exc})", getattr(exc, "loc", 0)) from None
    # 3. The weights it understood, bounded.
    for weight in conjunction.weights:
        if not 0 <= weight <= MAX_WEIGHT:
            raise fail(f"has an .and() weight {weight:g} outside 0..{MAX_WEIGHT:g}", text.find(".and("))
    parsed = []
    for prompt in conjunction.prompts:
        alternatives = prompt.prompts if isinstance(prompt, parser.Blend) else [prompt]
        if isinstance(prompt, parser.Blend) and not all(-MAX_WEIGHT <= w <= MAX_WEIGHT for w in prompt.weights):
            raise fail(f"has a .blend() weight outside -{MAX_WEIGHT:g}..{MAX_WEIGHT:g}", text.find(".blend("))
        fragments = []
        for alternative in alternatives:
            pieces = [(child.text, child.weight) for child in alternative.children]
            for piece, weight in pieces:
                if not 0 <= weight <= MAX_WEIGHT:
                    raise fail(f"weighs {piece!r} {weight:.3g}, outside 0..{MAX_WEIGHT:g}", max(text.find(piece), 0))
            fragments.append(pieces)
        parsed.append(fragments)
    return tuple(parsed)


def compel_chunk_count(tokenizer: Any, pieces: list[tuple[str, float]], chunk_tokens: int = 75) -> int:
    """Chunks compel cuts these pieces into (``EmbeddingsProvider._chunk_and_pad_token_ids`` with its default
    split mode): its rule counted here, torch-free, so that ``max_prompt_chunks`` is checked before any work."""
    ids = [t for text, _ in pieces for t in tokenizer(text, add_special_tokens=False, verbose=False).input_ids]
    names, chunks = tokenizer.convert_ids_to_tokens(ids), 0
    while True:
        split = chunk_tokens
        if len(names) > chunk_tokens:
            for is_split in SPLIT_TOKENS:
                at = next((i for i in range(chunk_tokens - 1, -1, -1) if is_split(names[i])), None)
                if at is not None:
                    split = at + 1
                    break
        names, chunks = names[split:], chunks + 1
        if not names:
            return chunks
