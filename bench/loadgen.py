"""A closed-loop load generator and its accounting (counts, latency percentiles, images/s, batch sizes).

C clients each send their next request as soon as the previous one answered, until N requests are done.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    """One request's outcome as the client saw it."""

    latency_s: float
    status: int
    images: int = 0
    executed_batch: int = 0  # requests in the handler call that served it (the handler's own accounting)
    handler_s: float = 0.0  # time inside that handler call, as the handler measured it


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def closed_loop(send: Callable[[int], Sample], clients: int, total: int) -> tuple[list[Sample], float]:
    """Run ``total`` requests from ``clients`` concurrent clients; ``send(i)`` makes request i.

    Returns the samples in request order and the wall time from the first send to the last answer.
    """
    if clients < 1 or total < 0:
        raise ValueError(f"need clients >= 1 and total >= 0, got {clients}, {total}")
    samples: list[Sample | None] = [None] * total
    next_index = iter(range(total))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                return
            samples[index] = send(index)

    threads = [threading.Thread(target=client) for _ in range(min(clients, max(total, 1)))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    assert all(s is not None for s in samples), "a request got no sample"
    return samples, wall  # type: ignore[return-value]


def summarize(samples: list[Sample], wall_s: float) -> dict:
    """Counts, throughput and latency percentiles of one run (latencies of successful requests only)."""
    ok = [s for s in samples if 200 <= s.status < 300]
    latencies = [s.latency_s for s in ok]
    images = sum(s.images for s in ok)
    summary = {
        "requests": len(samples),
        "ok": len(ok),
        "errors": len(samples) - len(ok),
        "images": images,
        "wall_s": round(wall_s, 3),
        "images_per_s": round(images / wall_s, 4) if wall_s > 0 else 0.0,
        "mean_executed_batch": round(sum(s.executed_batch for s in ok) / len(ok), 3) if ok else 0.0,
        "mean_handler_s": round(sum(s.handler_s for s in ok) / len(ok), 4) if ok else 0.0,
    }
    for q in (50, 95, 99):
        summary[f"p{q}_s"] = round(percentile(latencies, q), 4) if latencies else None
    return summary
