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

from handler.contract.prompts import chunk_layout


def padded(tokenizer: Any, chunk: list[tuple[int, float]]) -> tuple[list[int], list[float]]:
    """One chunk as the encoder takes it: ``[BOS] + tokens + [EOS]`` padded to 77, and each position's weight."""
    size, pad = tokenizer.model_max_length, tokenizer.pad_token_id
    filler = size - len(chunk) - 2
    ids = [tokenizer.bos_token_id, *(token for token, _ in chunk), tokenizer.eos_token_id] + [pad] * filler
    return ids, [1.0, *(weight for _, weight in chunk), 1.0] + [1.0] * filler


def encode_texts(
    encoders: list[tuple[Any, Any]], layouts: list[list], count: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each encoder its text's chunks (:func:`handler.contract.prompts.chunk_layout`), padded to ``count``
    with empty ones: (hidden states ``(1, 77 x count, sum of widths)`` from the penultimate layer, the first
    chunk's pooled embedding or None when no encoder projects one). Weighted tokens follow A1111's emphasis
    rule, chunk by chunk: the hidden states times the weights, then scaled back to the chunk's original mean."""
    hidden, pooled = [], None
    for (tokenizer, encoder), layout in zip(encoders, layouts, strict=False):
        rows = [padded(tokenizer, chunk) for chunk in layout + [[]] * (count - len(layout))]
        output = encoder(torch.tensor([ids for ids, _ in rows], device=device), output_hidden_states=True)
        if pooled is None and output[0].ndim == 2:  # CLIPTextModelWithProjection's text_embeds (diffusers' rule)
            pooled = output[0][:1]
        states = output.hidden_states[-2]
        weights = torch.tensor([w for _, w in rows], device=device, dtype=states.dtype)
        if bool((weights != 1).any()):
            original = states.mean(dim=(1, 2), keepdim=True)
            states = states * weights[..., None]
            states = states * (original / states.mean(dim=(1, 2), keepdim=True))
        hidden.append(states.reshape(1, -1, states.shape[-1]))
    return torch.cat(hidden, dim=-1), pooled


def encode_chunked(
    pipeline: Any, device: torch.device, request: Any, guidance: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """``plain`` and ``a1111`` texts by the chunking rule of this module, once per request."""
    pairs = ((pipeline.tokenizer, pipeline.text_encoder), (pipeline.tokenizer_2, pipeline.text_encoder_2))
    encoders = [(tokenizer, encoder) for tokenizer, encoder in pairs if tokenizer is not None]
    # diffusers' refiner (one encoder) gives it `prompt`; the base gives the second `prompt_2 or prompt`.
    positive = [request.prompt, request.prompt_2 or request.prompt][: len(encoders)]
    zero_negative = not request.negative_prompt and pipeline.config.force_zeros_for_empty_prompt
    negative = [request.negative_prompt or "", request.negative_prompt_2 or request.negative_prompt or ""]
    negative = negative[: len(encoders)]
    syntax = request.prompt_syntax
    layouts = [chunk_layout(tokenizer, text, syntax) for (tokenizer, _), text in zip(encoders * 2, positive + negative,
                                                                                       strict=False)]  # fmt: skip
    positive_layouts, negative_layouts = layouts[: len(encoders)], layouts[len(encoders) :]
    used = positive_layouts + (negative_layouts if guidance and not zero_negative else [])
    count = max(len(layout) for layout in used)
    embeds, pooled = encode_texts(encoders, positive_layouts, count, device)
    negative_embeds = negative_pooled = None
    if guidance:
        if zero_negative:
            negative_embeds, negative_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
        else:
            negative_embeds, negative_pooled = encode_texts(encoders, negative_layouts, count, device)
    return embeds, negative_embeds, pooled, negative_pooled


def compel_for(pipeline: Any) -> Any:
    """compel's SDXL entry point for a two-encoder pipeline, or compel's second-encoder half for the refiner
    (one encoder); made once per pipeline. compel is the ``compel`` extra: a request naming the syntax is
    refused at parse when it is missing (:mod:`handler.contract.compel_syntax`)."""
    made = getattr(pipeline, "_sdxl_compel", None)
    if made is None:
        from compel import Compel, CompelForSDXL, ReturnedEmbeddingsType

        if pipeline.tokenizer is not None:
            made = CompelForSDXL(pipeline, device=pipeline.text_encoder_2.device)
        else:  # CompelForSDXL's compel_2, as it builds it
            made = Compel(
                tokenizer=pipeline.tokenizer_2,
                text_encoder=pipeline.text_encoder_2,
                returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
                truncate_long_prompts=False,
                requires_pooled=True,
                device=pipeline.text_encoder_2.device,
            )
        pipeline._sdxl_compel = made
    return made


def encode_with_compel(
    pipeline: Any, device: torch.device, request: Any, guidance: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """``compel`` texts through compel itself (its syntax and math, its chunking of long prompts; a request's
    texts padded to one length by compel), once per request."""
    compel = compel_for(pipeline)
    zero_negative = not request.negative_prompt and pipeline.config.force_zeros_for_empty_prompt
    negative = request.negative_prompt or ""
    with_negative = guidance and not zero_negative
    if pipeline.tokenizer is not None:
        made = compel(
            main_prompt=request.prompt,
            style_prompt=request.prompt_2 or request.prompt,
            negative_prompt=negative if with_negative else None,
            negative_style_prompt=(request.negative_prompt_2 or negative) if with_negative else None,
        )
        embeds, pooled = made.embeds, made.pooled_embeds
        negative_embeds, negative_pooled = made.negative_embeds, made.negative_pooled_embeds
    else:  # the refiner: diffusers gives its one encoder `prompt`
        texts = [request.prompt] + ([negative] if with_negative else [])
        stacked, pooled_rows = compel(texts)
        embeds, pooled = stacked[:1], pooled_rows[:1]
        negative_embeds, negative_pooled = (stacked[1:], pooled_rows[1:]) if with_negative else (None, None)
    if not guidance:
        negative_embeds = negative_pooled = None
    elif zero_negative:
        negative_embeds, negative_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
    return embeds, negative_embeds, pooled, negative_pooled


def encode_prompts(
    pipeline: Any, device: torch.device, request: Any, guidance: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """(embeds, negative embeds, pooled, negative pooled), each repeated for the request's images, as
    ``encode_prompt`` returns them (negatives None without guidance; zeros for an empty negative where the
    pipeline's ``force_zeros_for_empty_prompt`` says so)."""
    if request.prompt_syntax == "compel":
        embeds, negative_embeds, pooled, negative_pooled = encode_with_compel(pipeline, device, request, guidance)
    else:
        embeds, negative_embeds, pooled, negative_pooled = encode_chunked(pipeline, device, request, guidance)
    dtype, images = pipeline.text_encoder_2.dtype, request.num_images_per_prompt

    def repeat(tensor: torch.Tensor | None) -> torch.Tensor | None:
        if tensor is None:
            return None
        tensor = tensor.to(dtype=dtype, device=device)
        return tensor.repeat(images, *([1] * (tensor.ndim - 1)))

    return repeat(embeds), repeat(negative_embeds), repeat(pooled), repeat(negative_pooled)
