"""Prompt token counts, checked at parse by every front door: each text must fit the text encoders it goes to.

The counts come from the model's own tokenizers (transformers' tokenizers import no torch): TorchServe's core
hands over the loaded pipeline's, the job gateway loads them from the model folder (``tokenizer/``,
``tokenizer_2/``). A text longer than its encoder takes is refused, never cut (diffusers would cut it, with only
a log line).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handler.contract.errors import ConfigError, InvalidRequest


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

    def check(self, request: Any) -> None:
        """Each text goes to the encoders the pipeline gives it: ``prompt`` to both unless ``prompt_2`` is set,
        ``prompt_2`` to the second (the same for the negative ones).

        Raises:
            InvalidRequest: naming the field, its token count and the encoder's limit.
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
                tokens = len(tokenizer(text, verbose=False).input_ids)
                if tokens > tokenizer.model_max_length:
                    raise InvalidRequest(
                        f"`{name}` is {tokens} tokens but the text encoders take at most "
                        f"{tokenizer.model_max_length} (with start and end); shorten it",
                        field=name,
                        value=text,
                    )
