"""Served throughput and latency of SDXL on TorchServe against the in-process ceiling and a one-at-a-time baseline.

    python -m bench.run                      # CPU, tiny model: every variant in one invocation (< 5 min here)
    python -m bench.run --batch-sizes 4 --requests 32 --clients 8    # one point
    python -m bench.run --suite continuous   # open-loop arrivals, static vs continuous batching (bench/openloop.py)

Variants, all on the same requests (fixed seeds, one prompt per request):
  direct-bB     the pipeline called in-process with batches of B (the ceiling for serving)
  served-bB     TorchServe + our handler at batchSize B
  baseline-bB   TorchServe + a handler that gets the same batches but runs requests one at a time (B >= 4)
  streamed-b4   served-b4 with every request streamed (progress events), to price streaming
  samplers-b4   served-b4's model, each request on one of 6 first-order samplers in turn
  steps20-b4 / preset4-b4   served-b4's model at 20 steps, and at a fast preset's 4 LCM steps without guidance
  img2img-mixed-b4  served-b4's model, every other request img2img at strength 1 (the same steps, plus an
                VAE encode of its init image), to price image inputs in a shared batch
  mixed-*       ours and the baseline at batchSize 4 with 3 shapes/step counts interleaved
Writes results.json (machine, versions, settings, every figure) and chart.png into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil
import requests

from bench.direct import bench_request, run_direct
from bench.loadgen import Sample, closed_loop, summarize
from bench.variants import build_variant, machine_info, model_yaml
from handler.contract.settings import HandlerSettings
from handler.model.loading import load_pipeline
from scripts.torchserve_control import TorchServe, loopback_addresses, write_config

REPO_ROOT = Path(__file__).resolve().parent.parent
BASELINE_HANDLER = REPO_ROOT / "bench" / "baseline_handler.py"


class PeakRSS:
    """Samples a process's resident memory in the background; ``peak_mb`` after the block."""

    def __init__(self, pid: int, interval_s: float = 0.02):
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRSS:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)


# First-order samplers (one UNet forward per step, like the default), so a mixed load does the same work.
MIXED_SAMPLERS = ("euler", "euler_a", "dpmpp_2m", "ddim", "unipc", "lcm")
# What a fast preset asks for (config/sdxl-lcm-lora.yaml's defaults, guidance off as Turbo/Lightning).
FAST_PRESET = {"num_inference_steps": 4, "sampler": "lcm", "schedule": "trailing", "guidance_scale": 1.0}


def init_image_base64(size: int) -> str:
    """A seeded size x size PNG for the img2img requests (base64)."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.RandomState(0).randint(0, 256, (size, size, 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def mixed_shapes(size: int, steps: int) -> list[tuple[int, int, int]]:
    wide = (size * 3 // 2) // 8 * 8
    return [(size, size, steps), (wide, size, steps), (size, size, steps * 2)]


def served_sender(server: TorchServe, model: str, body_for, stream: bool = False):
    """``send(i)`` for the load generator; with ``stream`` it asks for progress events and reads them all."""
    url = f"{server.inference_url}/predictions/{model}"
    local = threading.local()

    def send(index: int) -> Sample:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        headers = {"Content-Type": "application/json", **server.headers("inference")}
        body = {**body_for(index), "stream": True} if stream else body_for(index)
        started = time.perf_counter()
        response = local.session.post(url, data=json.dumps(body), headers=headers, timeout=600, stream=stream)
        lines = [line for line in response.iter_lines() if line] if stream else [response.content]
        latency = time.perf_counter() - started
        if response.status_code != 200:
            return Sample(latency, response.status_code)
        document = json.loads(lines[-1])
        if document.get("event") == "error":
            return Sample(latency, document["code"])
        return Sample(
            latency,
            200,
            len(document["images"]),
            document["batch"]["requests"],
            document["timings_ms"]["total"] / 1000,
        )

    return send


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sdxl-bench-"))
    base_yaml = REPO_ROOT / "config" / args.config
    size, steps = args.size, args.steps
    body_for = lambda i: bench_request(i, size, size, steps)  # noqa: E731
    shapes = mixed_shapes(size, steps)

    def mixed_body_for(i: int) -> dict:
        width, height, mixed_steps = shapes[i % len(shapes)]
        return bench_request(i, width, height, mixed_steps)

    settings = HandlerSettings.from_yaml(model_yaml(base_yaml, 1, 0, size, size, steps))
    results: dict = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {
            "model": args.model,
            "size": size,
            "steps": steps,
            "guidance_scale": settings.defaults.guidance_scale,
            "requests": args.requests,
            "rounds": args.rounds,
            "clients": args.clients,
            "batch_sizes": args.batch_sizes,
            "max_batch_delay_ms": args.max_batch_delay,
            "mixed_shapes": shapes,
            "gpu_hourly_usd": args.gpu_hourly_usd,
        },
        "variants": [],
    }

    # 1. The model folder (tiny: built offline from code; or a diffusers folder).
    if args.model == "tiny":
        from handler.model.tiny_model import save_tiny_pipeline

        model_dir = save_tiny_pipeline(work / "tiny-sdxl")
    else:
        model_dir = Path(args.model)

    # 2. Archives: ours at every batch size, the baseline at 4 and up (at 1 the two are the same).
    store = work / "model_store"
    models: list[tuple[str, str, int, object]] = []
    for batch_size in args.batch_sizes:
        models.append((f"served-b{batch_size}", "served", batch_size, body_for))
        if batch_size >= 4:
            models.append((f"baseline-b{batch_size}", "baseline", batch_size, body_for))
    models += [
        ("mixed-served-b4", "mixed-served", 4, mixed_body_for),
        ("mixed-baseline-b4", "mixed-baseline", 4, mixed_body_for),
    ]
    for name, kind, batch_size, _ in models:
        config = model_yaml(base_yaml, batch_size, args.max_batch_delay, size, size, steps)
        build_variant(model_dir, config, name, work, BASELINE_HANDLER if "baseline" in kind else None)

    # 3. One TorchServe with every variant loaded (idle workers cost no CPU), and the same pipeline in-process.
    config = write_config(
        work / "config.properties",
        {
            **loopback_addresses(),
            "load_models": ",".join(name for name, *_ in models),
        },
    )
    server = TorchServe(workdir=work / "server", config=config, model_store=store)
    server.start()
    rounds: dict[str, list[dict]] = {}
    try:
        for name, *_ in models:
            server.wait_ready(name, timeout=args.ready_timeout)
        loaded = load_pipeline(str(model_dir), settings)

        # 4. Rounds: every variant once per round, direct and served back to back at each batch size, so
        #    slow drifts of the machine hit both alike. Figures are the median round's.
        for round_index in range(args.rounds):
            for batch_size in args.batch_sizes:
                with PeakRSS(os.getpid()) as rss:
                    summary = run_direct(loaded, batch_size, args.requests, body_for, settings.defaults.guidance_scale)
                record(rounds, f"direct-b{batch_size}", "direct", batch_size, summary, rss.peak_mb, round_index)
                for name, kind, model_batch, body in models:
                    if model_batch == batch_size and not kind.startswith("mixed"):
                        served_run(server, name, kind, model_batch, body, args, rounds, round_index)
                if batch_size == 4:
                    served_run(server, "streamed-b4", "streamed", 4, body_for, args, rounds, round_index)
                    samplers_body_for = lambda i: {**body_for(i), "sampler": MIXED_SAMPLERS[i % len(MIXED_SAMPLERS)]}  # noqa: E731
                    served_run(server, "samplers-b4", "samplers", 4, samplers_body_for, args, rounds, round_index)
                    # A fast preset's request (4 trailing LCM steps, no guidance) against the 20-step default.
                    for name, extra in (("steps20-b4", {"num_inference_steps": 20}), ("preset4-b4", FAST_PRESET)):
                        preset_body_for = lambda i, extra=extra: {**body_for(i), **extra}  # noqa: E731
                        served_run(server, name, "preset", 4, preset_body_for, args, rounds, round_index)
                    image = {"image": init_image_base64(size), "strength": 1.0}
                    img2img_body_for = lambda i, image=image: {**body_for(i), **(image if i % 2 else {})}  # noqa: E731
                    served_run(server, "img2img-mixed-b4", "img2img", 4, img2img_body_for, args, rounds, round_index)
            for name, kind, model_batch, body in models:
                if kind.startswith("mixed"):
                    served_run(server, name, kind, model_batch, body, args, rounds, round_index)
    finally:
        server.stop()
    results["variants"] = [median_round(runs) for runs in rounds.values()]

    results["ratios"] = ratios(rounds)
    if args.gpu_hourly_usd:
        for variant in results["variants"]:
            if variant["images_per_s"]:
                variant["usd_per_1000_images"] = round(args.gpu_hourly_usd / 3600 / variant["images_per_s"] * 1000, 4)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    from bench.chart import draw

    draw(results, out / "chart.png")
    print(f"results: {out / 'results.json'}, chart: {out / 'chart.png'}")
    return results


def record(rounds: dict, name: str, kind: str, batch_size: int, summary: dict, peak_mb: float, index: int) -> None:
    rounds.setdefault(name, []).append(
        {"name": name, "kind": kind, "batch_size": batch_size, **summary, "peak_rss_mb": peak_mb}
    )
    print(
        f"round {index + 1} {name}: {summary['images_per_s']} images/s, p50 {summary.get('p50_s')} s, "
        f"mean batch {summary['mean_executed_batch']}, errors {summary.get('errors', 0)}",
        flush=True,
    )


def served_run(server, name, kind, batch_size, body_for, args, rounds, round_index) -> None:
    # "streamed-bB" is served-bB's model with every request streamed, to price streaming; "samplers-bB" the
    # same model with each request on another sampler, to show that mixed samplers still share every forward.
    model = f"served-b{batch_size}" if kind in ("streamed", "samplers", "preset", "img2img") else name
    send = served_sender(server, model, body_for, stream=kind == "streamed")
    for index in range(2):  # warm the connection path and the worker
        send(10_000 + index)
    with PeakRSS(server.worker_pids(model)[0]) as rss:
        samples, wall = closed_loop(send, args.clients, args.requests)
    record(rounds, name, kind, batch_size, summarize(samples, wall), rss.peak_mb, round_index)


def median_round(runs: list[dict]) -> dict:
    """The run with the median images/s (the lower middle for an even count), plus every round's figure."""
    ordered = sorted(runs, key=lambda r: r["images_per_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["images_per_s_rounds"] = [r["images_per_s"] for r in runs]
    return chosen


# (ratio name, numerator variant, denominator variant): the comparisons the benchmark exists for.
def compared_pairs(names: set[str]) -> list[tuple[str, str, str]]:
    pairs = []
    for name in sorted(names):
        if name.startswith("served-b"):
            b = name.removeprefix("served-b")
            pairs += [
                (f"served_over_direct_b{b}", name, f"direct-b{b}"),
                (f"served_over_baseline_b{b}", name, f"baseline-b{b}"),
            ]
    pairs += [
        ("streamed_over_served_b4", "streamed-b4", "served-b4"),
        ("mixed_samplers_over_served_b4", "samplers-b4", "served-b4"),
        ("preset4_over_steps20_b4", "preset4-b4", "steps20-b4"),
        ("img2img_mixed_over_served_b4", "img2img-mixed-b4", "served-b4"),
        ("mixed_served_over_baseline_b4", "mixed-served-b4", "mixed-baseline-b4"),
    ]
    return [pair for pair in pairs if pair[1] in names and pair[2] in names]


def ratios(rounds: dict[str, list[dict]]) -> dict:
    """Each ratio per round (the two variants ran minutes apart at most), then the median over rounds:
    a shared VM's speed drifts between rounds far more than within one."""
    found = {}
    for ratio, numerator, denominator in compared_pairs(set(rounds)):
        per_round = [
            n["images_per_s"] / d["images_per_s"] for n, d in zip(rounds[numerator], rounds[denominator], strict=True)
        ]
        found[ratio] = {"median": round(statistics.median(per_round), 3), "rounds": [round(r, 3) for r in per_round]}
    return found


SUITES = ("serving", "continuous")


def main(argv: list[str] | None = None) -> None:
    # --suite continuous hands every other argument to bench/openloop.py (its own options and defaults).
    chooser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    chooser.add_argument("--suite", choices=SUITES, default="serving")
    chosen, rest = chooser.parse_known_args(argv)
    if chosen.suite == "continuous":
        from bench.openloop import main as openloop_main

        return openloop_main(rest)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--suite",
        choices=SUITES,
        default="serving",
        help="serving (default): the variants above; continuous: open-loop static vs continuous batching, whose "
        "options `--suite continuous --help` lists",
    )
    parser.add_argument("--model", default="tiny", help="tiny (default) or a diffusers folder")
    parser.add_argument(
        "--config", default="tiny-sdxl.yaml", help="base model yaml in config/ (default tiny-sdxl.yaml)"
    )
    parser.add_argument("--size", type=int, default=64, help="image width and height (default 64)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps (default 4)")
    parser.add_argument("--requests", type=int, default=16, help="requests per variant and round (default 16)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every variant (default 3)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8])
    parser.add_argument("--max-batch-delay", type=int, default=50, help="ms (default 50)")
    parser.add_argument("--gpu-hourly-usd", type=float, default=0.0, help="$/hour of the machine, for $/1000 images")
    parser.add_argument("--ready-timeout", type=float, default=600)
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results" / f"{datetime.now():%Y-%m-%d}-cpu"))
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
