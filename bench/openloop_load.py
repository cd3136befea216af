"""The open-loop benchmark's load: which requests (a step-count mix), when they arrive (Poisson), how each is
sent and timed as its client sees it (streamed), the closed-loop capacity probe, and GPU utilization."""

from __future__ import annotations

import json
import random
import shutil
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass

import requests

from bench.direct import bench_request
from bench.loadgen import Sample, closed_loop

# -- the requests and when they arrive -------------------------------------------------------------


def request_mix(count: int, steps_mix: list[int], seed: int = 0) -> list[int]:
    """Request i's step count, drawn uniformly from ``steps_mix`` by a seeded RNG (a longer list keeps the
    shorter one as its prefix, so capacity and load runs share their first requests)."""
    rng = random.Random(seed)
    return [rng.choice(steps_mix) for _ in range(count)]


def arrival_schedule(count: int, rate_rps: float, seed: int = 0) -> list[float]:
    """Send offsets (s from the run start) of ``count`` Poisson arrivals at ``rate_rps``: the first at 0, then
    exponential gaps of mean 1/rate. One seed gives the same unit-rate gaps at every rate, so the schedules of
    two loads differ only by their time scale."""
    if rate_rps <= 0:
        raise ValueError(f"arrival rate must be > 0, got {rate_rps}")
    rng = random.Random(seed)
    offsets, now = [], 0.0
    for index in range(count):
        if index:
            now += rng.expovariate(1.0)
        offsets.append(now)
    # Rescaled so that the schedule's own mean rate is exactly rate_rps: a few dozen draws can be 20 % off,
    # and the load must be the stated fraction of capacity.
    scale = (count - 1) / (rate_rps * offsets[-1]) if count > 1 and offsets[-1] > 0 else 1 / rate_rps
    return [offset * scale for offset in offsets]


def request_body(index: int, steps: int, size: int) -> dict:
    """The benchmark's request i (bench.direct.bench_request: own prompt, seed i), streamed."""
    return {**bench_request(index, size, size, steps), "stream": True}


# -- one request, and an open loop of them ---------------------------------------------------------


@dataclass
class Outcome:
    """One streamed request as the client saw it; times are offsets from the run start (s)."""

    index: int
    steps: int
    sent_s: float
    status: int = 0  # 0: no HTTP answer; else the HTTP status, or the error event's code after a 200
    done_s: float | None = None
    latency_s: float | None = None  # send -> final ``result`` event
    first_progress_s: float | None = None  # send -> first ``progress`` event
    images: int = 0
    handler_total_s: float | None = None  # the reply's ``timings_ms.total``: its time inside the handler
    batch: dict | None = None  # the reply's ``batch`` section (the handler's accounting)
    error: str | None = None


def send_streamed(session: requests.Session, url: str, headers: dict, body: dict, origin: float, index: int) -> Outcome:
    """POST one streamed request and read its events as they come."""
    sent = time.perf_counter()
    outcome = Outcome(index, body["num_inference_steps"], sent_s=sent - origin)
    try:
        response = session.post(url, data=json.dumps(body), headers=headers, stream=True, timeout=600)
        with response:
            if response.status_code != 200:
                outcome.status, outcome.error = response.status_code, response.text[:300]
                return outcome
            last = None
            for line in response.iter_lines():
                if not line:
                    continue
                last = json.loads(line)
                if last.get("event") == "progress" and outcome.first_progress_s is None:
                    outcome.first_progress_s = time.perf_counter() - sent
        done = time.perf_counter()
        outcome.done_s = done - origin
        if last is None or last.get("event") != "result":
            outcome.status = (last or {}).get("code", 0)
            outcome.error = json.dumps(last)[:300]
            return outcome
        outcome.status, outcome.latency_s = 200, done - sent
        outcome.images, outcome.batch = len(last["images"]), last.get("batch")
        outcome.handler_total_s = last.get("timings_ms", {}).get("total", 0) / 1000
    except requests.RequestException as exc:
        outcome.error = repr(exc)[:300]
    return outcome


def sender(server, model: str, steps: list[int], size: int):
    """``send(i, origin)`` -> Outcome of request i on ``model``, one requests.Session per thread."""
    url = f"{server.inference_url}/predictions/{model}"
    headers = {"Content-Type": "application/json", **server.headers("inference")}
    local = threading.local()

    def send(index: int, origin: float) -> Outcome:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return send_streamed(local.session, url, headers, request_body(index, steps[index], size), origin, index)

    return send


def open_loop(send, offsets: list[float]) -> list[Outcome]:
    """Send request i at ``offsets[i]`` s after the start, each on its own thread, whatever the earlier requests
    are doing; returns when every request has its answer."""
    outcomes: list[Outcome | None] = [None] * len(offsets)

    def fire(index: int, origin: float) -> None:
        outcomes[index] = send(index, origin)

    threads = []
    origin = time.perf_counter()
    for index, offset in enumerate(offsets):
        delay = origin + offset - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        thread = threading.Thread(target=fire, args=(index, origin), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    assert all(o is not None for o in outcomes), "a request got no outcome"
    return outcomes  # type: ignore[return-value]


def capacity_rps(send, clients: int, total: int) -> dict:
    """Saturated throughput of the mix: ``total`` requests from ``clients`` closed-loop clients."""

    def closed_send(index: int) -> Sample:
        outcome = send(index, time.perf_counter())
        return Sample(outcome.latency_s or 0.0, outcome.status, outcome.images)

    samples, wall = closed_loop(closed_send, clients, total)
    ok = sum(1 for s in samples if s.status == 200)
    return {"rps": round(ok / wall, 4), "ok": ok, "errors": total - ok, "wall_s": round(wall, 3)}


def warm(send, count: int) -> None:
    """Requests 0..count-1 from ``count`` clients at once (one full batch), not counted."""
    closed_loop(lambda index: Sample(0.0, send(index, time.perf_counter()).status), count, count)


class GpuUtilization:
    """Mean GPU utilisation (%) sampled with nvidia-smi every ``interval_s`` (default 0.2) while the block runs;
    ``mean`` is None without nvidia-smi."""

    QUERY = ("--query-gpu=utilization.gpu", "--format=csv,noheader,nounits")

    def __init__(self, interval_s: float = 0.2):
        self.command = shutil.which("nvidia-smi")
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                text = subprocess.run([self.command, *self.QUERY], capture_output=True, text=True, timeout=5).stdout
                values = [float(v) for v in text.split() if v.replace(".", "", 1).isdigit()]
                if values:
                    self.samples.append(statistics.fmean(values))
            except (OSError, subprocess.SubprocessError):
                return
            self._stop.wait(self.interval_s)

    def __enter__(self) -> GpuUtilization:
        self._thread = threading.Thread(target=self._sample, daemon=True) if self.command else None
        if self._thread:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return round(statistics.fmean(self.samples), 1) if self.samples else None


# -- the benchmark -----------------------------------------------------------------------------------
