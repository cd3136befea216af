"""The handler's own Prometheus metrics: declared once here, computed from a finished batch.

TorchServe exposes a handler metric on ``/metrics`` (prometheus mode) only when its name, type, unit and
dimensions are declared in the ``model_metrics`` section of the server's metrics config:
``config/metrics.yaml`` carries TorchServe's defaults plus :func:`model_metrics_config` (a test keeps the
two in sync). The adapter forwards :func:`call_metrics` to ``context.metrics``; nothing here imports ts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from handler.contract.stages import Stage

# TorchServe appends these two dimensions to every model metric (and Hostname on the frontend side).
DEFAULT_DIMENSIONS = ("ModelName", "Level")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # "counter", "gauge" or "histogram"
    unit: str
    labels: tuple[str, ...]
    help: str


# TorchServe's Prometheus histograms have the client's fixed default buckets (5 ms .. 10 s). Diffusion takes
# 1-100 s, so durations are observed in dekaseconds (10 s): the same buckets then span 50 ms .. 100 s.
# Multiply by 10 in PromQL for seconds.
DEKASECONDS = 10.0

LATENCY = MetricSpec(
    "sdxl_generation_latency_dekaseconds",
    "histogram",
    "Dekaseconds",
    ("Steps",),
    "Handler time of a successful request, by num_inference_steps",
)
STAGE = MetricSpec(
    "sdxl_stage_dekaseconds",
    "histogram",
    "Dekaseconds",
    ("Stage",),
    "Time per stage of a request: text_encoding, vae_encode (img2img, inpainting), denoising, vae_decode, "
    "image_encoding",
)
IMAGES = MetricSpec("sdxl_images_generated_total", "counter", "Count", (), "Images returned to clients")
REQUESTS = MetricSpec(
    "sdxl_requests_total",
    "counter",
    "Count",
    ("Outcome",),
    "Requests handled, by outcome: ok, client_error, server_error, disconnected (continuous batching)",
)
REJECTED = MetricSpec(
    "sdxl_requests_rejected_total", "counter", "Count", ("Reason",), "Requests answered with an error, by error type"
)
BATCH = MetricSpec("sdxl_executed_batch_size", "histogram", "Count", (), "Requests per handler call")
GPU_MEMORY = MetricSpec(
    "sdxl_gpu_memory_allocated_bytes",
    "gauge",
    "Bytes",
    (),
    "GPU memory held by PyTorch tensors after a batch (CUDA only)",
)
LORA_LOADS = MetricSpec(
    "sdxl_lora_loads_total",
    "counter",
    "Count",
    ("Lora",),
    "Catalogue LoRAs loaded (first use, or again after eviction)",
)
LORA_HITS = MetricSpec(
    "sdxl_lora_cache_hits_total", "counter", "Count", ("Lora",), "Requests whose catalogue LoRA was already loaded"
)
LORA_EVICTIONS = MetricSpec(
    "sdxl_lora_evictions_total", "counter", "Count", ("Lora",), "Catalogue LoRAs evicted from the LRU"
)
LORA_LOAD_TIME = MetricSpec(
    "sdxl_lora_load_dekaseconds", "histogram", "Dekaseconds", (), "Time to load one catalogue LoRA"
)
LORAS_LOADED = MetricSpec("sdxl_loras_loaded", "gauge", "Count", (), "Catalogue LoRAs loaded now")
DEADLINES = MetricSpec(
    "sdxl_deadlines_total",
    "counter",
    "Count",
    ("Outcome", "Priority"),
    "Finished requests with a deadline_s, by outcome (met: handler time within it; missed) and priority; "
    'refused ones are sdxl_requests_rejected_total{Reason="DeadlineUnreachable"}',
)
METRICS = (
    LATENCY, STAGE, IMAGES, REQUESTS, REJECTED, BATCH, GPU_MEMORY,
    LORA_LOADS, LORA_HITS, LORA_EVICTIONS, LORA_LOAD_TIME, LORAS_LOADED, DEADLINES,
)  # fmt: skip
LORA_EVENTS = {"load": LORA_LOADS, "hit": LORA_HITS, "evict": LORA_EVICTIONS}

STAGES = {
    Stage.ENCODE_PROMPT: "text_encoding",
    Stage.VAE_ENCODE: "vae_encode",
    Stage.DENOISE: "denoising",
    Stage.VAE_DECODE: "vae_decode",
    Stage.ENCODE_IMAGE: "image_encoding",
}
OUTCOMES = ("ok", "client_error", "server_error", "disconnected")


@dataclass(frozen=True)
class Observation:
    spec: MetricSpec
    value: float
    labels: dict[str, str]


def model_metrics_config() -> dict[str, list[dict[str, Any]]]:
    """The ``model_metrics`` section of TorchServe's metrics config for :data:`METRICS`."""
    section: dict[str, list[dict[str, Any]]] = {}
    for spec in METRICS:
        section.setdefault(spec.kind, []).append(
            {"name": spec.name, "unit": spec.unit, "dimensions": [*spec.labels, *DEFAULT_DIMENSIONS]}
        )
    return section


def call_metrics(
    size: int,
    ended: dict[int, tuple[Any, Any, dict[str, float]]],
    disconnected: int = 0,
    gpu_memory_bytes: int | None = None,
    lora_events: list[tuple[str, str, float]] = (),
    loras_loaded: int | None = None,
) -> list[Observation]:
    """What one handler call adds to the metrics.

    Args:
        size (`int`): rows in the call.
        ended (`dict[int, tuple]`): per row that ENDS in this call, (its request or None, its ordinary
            :class:`~handler.wire.replies.Reply`, its stage timings in ms with "total").
        disconnected (`int`, defaults to 0): requests dropped because their client went away.
        gpu_memory_bytes (`int`, defaults to None): None on the CPU.
        lora_events (`list`, defaults to none): the LoRA catalogue's (kind, name, load ms) since the last call;
            kind is "load", "hit" or "evict".
        loras_loaded (`int`, defaults to None): LoRAs loaded now; None without a catalogue.
    """
    observations = [Observation(BATCH, size, {})]
    for request, reply, stage_ms in ended.values():
        observations.append(Observation(REQUESTS, 1, {"Outcome": reply.outcome}))
        if reply.error is not None:
            observations.append(Observation(REJECTED, 1, {"Reason": reply.error}))
            continue
        steps = str(request.num_inference_steps)
        observations.append(Observation(LATENCY, stage_ms[Stage.TOTAL] / 1000 / DEKASECONDS, {"Steps": steps}))
        observations.append(Observation(IMAGES, request.num_images_per_prompt, {}))
        if request.deadline_s is not None:
            met = stage_ms[Stage.TOTAL] / 1000 <= request.deadline_s
            labels = {"Outcome": "met" if met else "missed", "Priority": str(request.priority)}
            observations.append(Observation(DEADLINES, 1, labels))
        observations += [
            Observation(STAGE, stage_ms[key] / 1000 / DEKASECONDS, {"Stage": stage})
            for key, stage in STAGES.items()
            if key in stage_ms
        ]
    if disconnected:
        observations.append(Observation(REQUESTS, disconnected, {"Outcome": "disconnected"}))
    if gpu_memory_bytes is not None:
        observations.append(Observation(GPU_MEMORY, gpu_memory_bytes, {}))
    for kind, name, load_ms in lora_events:
        observations.append(Observation(LORA_EVENTS[kind], 1, {"Lora": name}))
        if kind == "load":
            observations.append(Observation(LORA_LOAD_TIME, load_ms / 1000 / DEKASECONDS, {}))
    if loras_loaded is not None:
        observations.append(Observation(LORAS_LOADED, loras_loaded, {}))
    return observations


def startup_observations(error_types: tuple[str, ...]) -> list[Observation]:
    """Zero increments that create every outcome and error series at startup, so rate() and alerts see a 0
    before the first failure instead of no series at all."""
    observations = [Observation(REQUESTS, 0, {"Outcome": outcome}) for outcome in OUTCOMES]
    observations += [Observation(REJECTED, 0, {"Reason": name}) for name in error_types]
    observations.append(Observation(IMAGES, 0, {}))
    return observations


def markdown_table() -> str:
    """The handler's metrics as docs/deploy.md shows them (``python -m handler.runtime.metrics``)."""
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    rows += [f"| `{m.name}` | {m.kind} | {', '.join(f'`{label}`' for label in m.labels)} | {m.help} |" for m in METRICS]
    return "\n".join(rows)


if __name__ == "__main__":  # the docs' table; --yaml: the model_metrics section for config/metrics.yaml
    import sys

    import yaml

    yaml_wanted = "--yaml" in sys.argv
    print(
        yaml.safe_dump({"model_metrics": model_metrics_config()}, sort_keys=False) if yaml_wanted else markdown_table()
    )
