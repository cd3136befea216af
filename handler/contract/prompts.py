"""Prompt token counts, checked at parse by every front door: each text fits in ``max_prompt_chunks`` chunks of
75 tokens (:mod:`handler.model.text_encoding` encodes them chunk by chunk).

The counts come from the model's own tokenizers (transformers' tokenizers import no torch): TorchServe's core
hands over the loaded pipeline's, the job gateway loads them from the model folder (``tokenizer/``,
``tokenizer_2/``). A text longer than that is refused, never cut (diffusers would cut it at 77, with only a log
line).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handler.contract.errors import ConfigError, InvalidRequest

CHUNK_TOKENS = 75  # a chunk's tokens between its BOS and EOS: 77 with them, the text encoders' length


def chunk_count(tokens: int) -> int:
    """Chunks a text of ``tokens`` tokens (without BOS/EOS) takes: at least one, for the empty text too."""
    return max(1, math.ceil(tokens / CHUNK_TOKENS))


def pieces_layout(tokenizer: Any, pieces: list[tuple[str, float]]) -> list[list[tuple[int, float]]]:
    """Weighted pieces as chunks of (token id, weight), at most 75 tokens each, without BOS/EOS: each piece
    tokenized on its own (A1111's and compel's way), ``(BREAK, -1)`` starting a new chunk."""
    chunks: list[list[tuple[int, float]]] = [[]]
    for piece, weight in pieces:
        if weight == -1 and piece == "BREAK":  # prompt_syntax.BREAK
            chunks.append([])
            continue
        for token in tokenizer(piece, add_special_tokens=False, verbose=False).input_ids:
            if len(chunks[-1]) == CHUNK_TOKENS:
                chunks.append([])
            chunks[-1].append((token, weight))
    if len(chunks) > 1 and not chunks[-1]:
        chunks.pop()  # a trailing BREAK or an exact multiple of 75 adds no empty chunk
    return chunks


def chunk_layout(tokenizer: Any, text: str, syntax: str = "plain") -> list[list[tuple[int, float]]]:
    """``text`` as chunks of (token id, weight), for ``plain`` and ``a1111`` (``compel`` texts are encoded by
    compel itself: :func:`chunk_total` counts them).

    ``plain``: the whole text tokenized at once, cut every 75 tokens, every weight 1 (a text of up to 75
    tokens is exactly what diffusers encodes). ``a1111``: each weighted piece tokenized on its own with its
    weight (:func:`handler.contract.prompt_syntax.parse_a1111`, A1111's way), ``BREAK`` starting a new chunk.
    """
    from handler.contract.prompt_syntax import weighted_pieces

    return pieces_layout(tokenizer, weighted_pieces(text, syntax)[0][0])


def chunk_total(tokenizer: Any, text: str, syntax: str, field: str = "prompt") -> tuple[int, int]:
    """(tokens, chunks) ``text`` takes in ``syntax``: compel's ``.and()`` parts each take their own chunks, its
    ``.blend()`` alternatives are padded to the longest."""
    from handler.contract.compel_syntax import compel_chunk_count
    from handler.contract.prompt_syntax import weighted_pieces

    tokens = chunks = 0
    for alternatives in weighted_pieces(text, syntax, field):
        layouts = [pieces_layout(tokenizer, pieces) for pieces in alternatives]
        tokens += max(sum(len(chunk) for chunk in layout) for layout in layouts)
        if syntax == "compel":  # compel cuts at sentence, phrase or word ends, so may take more chunks
            chunks += max(compel_chunk_count(tokenizer, pieces) for pieces in alternatives)
        else:
            chunks += max(len(layout) for layout in layouts)
    return tokens, chunks


@dataclass(frozen=True)
class PromptTokenizers:
    """The tokenizers of SDXL's two text encoders (``second`` may be None for a one-encoder model)."""

    first: Any
    second: Any = None

    @classmethod
    def load(cls, folder: str | Path) -> PromptTokenizers:
        """From a diffusers model folder (or any folder holding ``tokenizer/`` and ``tokenizer_2/``)."""
        from transformers import AutoTokenizer

        folder = Path(folder)
        if not (folder / "tokenizer").is_dir():
            raise ConfigError(
                f"{folder} has no tokenizer/ folder (a diffusers SDXL folder has tokenizer/ and tokenizer_2/)"
            )
        second = folder / "tokenizer_2"
        return cls(
            AutoTokenizer.from_pretrained(folder / "tokenizer"),
            AutoTokenizer.from_pretrained(second) if second.is_dir() else None,
        )

    def check(self, request: Any, max_chunks: int, syntax: str = "plain") -> None:
        """Each text goes to the encoders the pipeline gives it: ``prompt`` to both unless ``prompt_2`` is set,
        ``prompt_2`` to the second (the same for the negative ones); each fits ``max_chunks`` chunks.

        Raises:
            InvalidRequest: naming the field, its token count and the limit.
        """
        first, second = self.first, self.second
        both_or_first = [first] + ([second] if request.prompt_2 is None else [])
        negative_both_or_first = [first] + ([second] if request.negative_prompt_2 is None else [])
        texts = [
            ("prompt", request.prompt, both_or_first),
            ("prompt_2", request.prompt_2, [second]),
            ("negative_prompt", request.negative_prompt, negative_both_or_first),
            ("negative_prompt_2", request.negative_prompt_2, [second]),
        ]
        for name, text, tokenizers in texts:
            for tokenizer in (t for t in tokenizers if text and t is not None):
                tokens, chunks = chunk_total(tokenizer, text, syntax, name)
                if chunks > max_chunks:
                    raise InvalidRequest(
                        f"`{name}` is {tokens} tokens in {chunks} chunks, and this server takes at most "
                        f"{max_chunks * CHUNK_TOKENS} ({max_chunks} chunks of {CHUNK_TOKENS}: "
                        "handler.limits.max_prompt_chunks); shorten it",
                        field=name,
                        value=text,
                    )
