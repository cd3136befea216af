"""A request's text and size conditioning, exactly as ``StableDiffusionXLPipeline`` builds it, for one request.

The text encoders see this request alone, chunk by chunk past 75 tokens (:mod:`handler.model.text_encoding`);
its texts were checked to fit ``max_prompt_chunks`` at parse (:mod:`handler.contract.prompts`). SDXL's
micro-conditioning (original size, crop corner, target size, and the negative ones) follows the request's
fields, with the pipeline's defaults.
"""

from __future__ import annotations

from typing import Any

import torch

from handler.contract.request import GenerationRequest
from handler.model.text_encoding import encode_prompts


def time_ids(pipeline: Any, request: GenerationRequest, dtype: torch.dtype, negative: bool) -> torch.Tensor:
    """SDXL's size conditioning, one row: (original size, crop corner, target size); the negative rows use
    the negative fields when both negative sizes are set (the pipeline's rule), else the positive ones."""
    size = (request.height, request.width)
    original, crop, target = request.original_size or size, request.crops_coords_top_left, request.target_size or size
    if negative and request.negative_original_size is not None:
        original, crop = request.negative_original_size, request.negative_crops_coords_top_left
        target = request.negative_target_size
    return pipeline._get_add_time_ids(
        tuple(original),
        tuple(crop),
        tuple(target),
        dtype=dtype,
        text_encoder_projection_dim=pipeline.text_encoder_2.config.projection_dim,
    )


def refiner_time_ids(refiner: Any, request: GenerationRequest, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The refiner's (positive, negative) time ids: sizes with aesthetic scores instead of the target size, the
    refiner pipeline's own ``_get_add_time_ids`` (the negative sizes follow the positive ones unless set)."""
    size = (request.height, request.width)
    original, target = request.original_size or size, request.target_size or size
    return refiner._get_add_time_ids(
        tuple(original),
        tuple(request.crops_coords_top_left),
        tuple(target),
        request.aesthetic_score,
        request.negative_aesthetic_score,
        tuple(request.negative_original_size or original),
        tuple(request.negative_crops_coords_top_left),
        tuple(request.negative_target_size or target),
        dtype=dtype,
        text_encoder_projection_dim=refiner.text_encoder_2.config.projection_dim,
    )


def encode_conditioning(
    pipeline: Any, device: torch.device, request: GenerationRequest, guidance: bool, refiner: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt embeddings, pooled embeddings and time ids, rows ``[negative..., positive...]`` with guidance, for
    the base (``StableDiffusionXLPipeline``) or, with ``refiner``, the refiner (its img2img pipeline: only
    ``text_encoder_2``, aesthetic-score time ids). An empty negative prompt gives zero embeddings (the
    pipelines' rule).

    Args:
        pipeline (`Any`): the base pipeline, or the refiner's.
        device (`torch.device`): where the rows go.
        request (`GenerationRequest`): the request's texts and micro-conditioning.
        guidance (`bool`): classifier-free guidance: negative rows first.
        refiner (`bool`, defaults to False): ``pipeline`` is the refiner's.
    """
    images = request.num_images_per_prompt
    embeds, negative, pooled, negative_pooled = encode_prompts(pipeline, device, request, guidance)
    if refiner:
        positive_ids, negative_ids = refiner_time_ids(pipeline, request, embeds.dtype)
    else:
        positive_ids = time_ids(pipeline, request, embeds.dtype, negative=False)
        negative_ids = time_ids(pipeline, request, embeds.dtype, negative=True) if guidance else None
    ids = positive_ids.repeat(images, 1)
    if guidance:
        embeds, pooled = torch.cat([negative, embeds]), torch.cat([negative_pooled, pooled])
        ids = torch.cat([negative_ids.repeat(images, 1), ids])
    return embeds.to(device), pooled.to(device), ids.to(device)
