"""The ceiling for serving: the same pipeline called in-process with batches of B, no server in between."""

from __future__ import annotations

import time

import torch

from handler.contract.request import GenerationRequest
from handler.model.denoise import Denoiser
from handler.model.loading import LoadedPipeline
from handler.runtime.engine import Engine
from handler.runtime.side_work import SideWorker


def direct_engine(pipeline, device: torch.device, max_images_per_call: int = 64) -> Engine:
    """The handler's own engine with nothing around it: no server, no image encoding, no side thread."""
    return Engine(Denoiser(pipeline, device), max_images_per_call, SideWorker(device, overlap=False))


def bench_request(index: int, width: int, height: int, steps: int) -> dict:
    """The benchmark's request i: its own prompt and fixed seed, so every variant makes the same images."""
    return {
        "prompt": f"benchmark image {index}: a lighthouse on a cliff at dawn",
        "seed": index,
        "width": width,
        "height": height,
        "num_inference_steps": steps,
    }


def as_request(body: dict, guidance_scale: float) -> GenerationRequest:
    return GenerationRequest(
        prompt=body["prompt"],
        negative_prompt="",
        prompt_2=None,
        negative_prompt_2=None,
        num_inference_steps=body["num_inference_steps"],
        guidance_scale=guidance_scale,
        width=body["width"],
        height=body["height"],
        seed=body["seed"],
        num_images_per_prompt=1,
        output_format="png",
    )


def run_direct(loaded: LoadedPipeline, batch_size: int, total: int, body_for, guidance_scale: float) -> dict:
    """Generate ``total`` images in pipeline calls of ``batch_size``; one warmup call is not counted."""
    engine = direct_engine(loaded.pipeline, loaded.device, max(batch_size, 1))
    requests = [as_request(body_for(i), guidance_scale) for i in range(total)]
    engine.generate(requests[:batch_size])
    calls = []
    started = time.perf_counter()
    for start in range(0, total, batch_size):
        call_started = time.perf_counter()
        engine.generate(requests[start : start + batch_size])
        calls.append(time.perf_counter() - call_started)
    wall = time.perf_counter() - started
    return {
        "requests": total,
        "images": total,
        "wall_s": round(wall, 3),
        "images_per_s": round(total / wall, 4),
        "mean_executed_batch": batch_size,
        "mean_handler_s": round(sum(calls) / len(calls), 4),
    }
