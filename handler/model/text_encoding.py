"""Prompts of any length through SDXL's text encoders, by the rule A1111 and compel share.

A text's tokens are cut into chunks of 75; each chunk becomes ``[BOS] + tokens + [EOS]``, padded to 77, and is
encoded on its own (its own position embeddings); the chunks' hidden states are concatenated along the sequence
(77 x k). The pooled embedding is the first chunk's. Texts of one request with fewer chunks (the negative, or
``prompt_2``) are padded with empty chunks (``""`` encoded: compel's ``pad_conditioning_tensors_to_same_length``),
so a request's rows share one length; requests of different lengths share a UNet forward through an attention
mask (:meth:`handler.model.denoise.Denoiser.step`). A text of at most 75 tokens is one chunk: exactly what
``StableDiffusionXLPipeline.encode_prompt`` makes, bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch

from handler.contract.prompts import CHUNK_TOKENS, chunk_count


def chunk_ids(tokenizer: Any, text: str, count: int) -> list[list[int]]:
    """``text`` as ``count`` chunks of token ids (the last ones empty when it has fewer)."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False).input_ids
    pieces = [ids[i : i + CHUNK_TOKENS] for i in range(0, len(ids), CHUNK_TOKENS)]
    pieces += [[]] * (count - len(pieces))
    size, pad = tokenizer.model_max_length, tokenizer.pad_token_id
    return [
        [tokenizer.bos_token_id, *piece, tokenizer.eos_token_id] + [pad] * (size - len(piece) - 2) for piece in pieces
    ]


def encode_texts(
    encoders: list[tuple[Any, Any]], texts: list[str], count: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each encoder its text in ``count`` chunks: (hidden states ``(1, 77 x count, sum of widths)`` from the
    penultimate layer, the first chunk's pooled embedding or None when no encoder projects one)."""
    hidden, pooled = [], None
    for (tokenizer, encoder), text in zip(encoders, texts, strict=False):
        ids = torch.tensor(chunk_ids(tokenizer, text, count), device=device)
        output = encoder(ids, output_hidden_states=True)
        if pooled is None and output[0].ndim == 2:  # CLIPTextModelWithProjection's text_embeds (diffusers' rule)
            pooled = output[0][:1]
        states = output.hidden_states[-2]
        hidden.append(states.reshape(1, -1, states.shape[-1]))
    return torch.cat(hidden, dim=-1), pooled


def encode_prompts(
    pipeline: Any, device: torch.device, request: Any, guidance: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """(embeds, negative embeds, pooled, negative pooled), each repeated for the request's images, as
    ``encode_prompt`` returns them (negatives None without guidance; zeros for an empty negative where the
    pipeline's ``force_zeros_for_empty_prompt`` says so)."""
    pairs = ((pipeline.tokenizer, pipeline.text_encoder), (pipeline.tokenizer_2, pipeline.text_encoder_2))
    encoders = [(tokenizer, encoder) for tokenizer, encoder in pairs if tokenizer is not None]
    # diffusers' refiner (one encoder) gives it `prompt`; the base gives the second `prompt_2 or prompt`.
    positive = [request.prompt, request.prompt_2 or request.prompt][: len(encoders)]
    zero_negative = not request.negative_prompt and pipeline.config.force_zeros_for_empty_prompt
    negative = [request.negative_prompt or "", request.negative_prompt_2 or request.negative_prompt or ""]
    negative = negative[: len(encoders)]
    texts = positive + (negative if guidance and not zero_negative else [])
    count = max(chunk_count(len(tokenizer(text, add_special_tokens=False, verbose=False).input_ids))
                for (tokenizer, _), text in zip(encoders * 2, texts, strict=False))  # fmt: skip
    embeds, pooled = encode_texts(encoders, positive, count, device)
    negative_embeds = negative_pooled = None
    if guidance:
        if zero_negative:
            negative_embeds, negative_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
        else:
            negative_embeds, negative_pooled = encode_texts(encoders, negative, count, device)
    dtype, images = pipeline.text_encoder_2.dtype, request.num_images_per_prompt

    def repeat(tensor: torch.Tensor | None) -> torch.Tensor | None:
        if tensor is None:
            return None
        tensor = tensor.to(dtype=dtype, device=device)
        return tensor.repeat(images, *([1] * (tensor.ndim - 1)))

    return repeat(embeds), repeat(negative_embeds), repeat(pooled), repeat(negative_pooled)
