"""Open-loop arrivals: static batching against step-level continuous batching on the same TorchServe.

    python -m bench.openloop                          # CPU, tiny model, every load and round in one invocation
    python -m bench.run --suite continuous            # the same
    python -m bench.openloop --requests 6 --rounds 1 --loads 0.5 --capacity-requests 8 --out /tmp/ol-smoke

Three models on one server, same batchSize B (default 8) and maxBatchDelay: ``static`` (TorchServe's
batches) and continuous batching (``continuousBatching: true``: requests join and leave the denoising loop
between steps) with finishers decoded inside the call (``continuous-inline``) or on a side thread
(``continuous-overlap``). The requests mix step counts (default 4, 8 and 16), each with its own prompt and
fixed seed, all streamed so that the client times the first progress event. Capacity is the lower of
static's and continuous-inline's closed-loop throughputs; then, at each load (a fraction of capacity), the
same Poisson arrival schedule is replayed against each mode, every request sent at its time whatever the
earlier ones are doing. Writes results.json and chart.png into --out; prints the tables
(bench/openloop_summary.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from bench.openloop_load import (
    GpuUtilization,
    arrival_schedule,
    capacity_rps,
    open_loop,
    request_mix,
    sender,
    warm,
)
from bench.openloop_summary import markdown, ratios, summaries, summarize_run

REPO_ROOT = Path(__file__).resolve().parent.parent
# Continuous batching twice: finishers decoded inside the call (overlap_side_work: false, the CPU default) and
# beside the steps on a side thread (true, the CUDA default), to measure what overlapping that work buys.
MODES = ("static", "continuous-inline", "continuous-overlap")
CAPACITY_MODES = ("static", "continuous-inline")

__all__ = ["main", "markdown", "run"]


def model_yamls(base: Path, args: argparse.Namespace) -> dict[str, dict]:
    """The model yamls: the base config at batchSize B and maxBatchDelay; continuous adds
    ``continuousBatching: true``, its own maxBatchDelay, ``handler.steps_per_call`` and
    ``handler.overlap_side_work``."""
    from bench.variants import model_yaml

    static = model_yaml(base, args.batch_size, args.max_batch_delay, args.size, args.size, min(args.steps_mix))
    continuous = copy.deepcopy(static)
    continuous["continuousBatching"] = True
    continuous["handler"]["steps_per_call"] = args.steps_per_call
    # Waiting to fill a batch only delays a lone arrival: later ones join at the next step anyway.
    continuous["maxBatchDelay"] = args.continuous_max_batch_delay
    inline, overlap = copy.deepcopy(continuous), copy.deepcopy(continuous)
    inline["handler"]["overlap_side_work"] = False
    overlap["handler"]["overlap_side_work"] = True
    return {"static": static, "continuous-inline": inline, "continuous-overlap": overlap}


def timed_run(server, mode: str, steps: list[int], offsets: list[float], size: int) -> dict:
    """One open-loop run of ``offsets`` against ``mode``: its summary and every request's record."""
    with GpuUtilization() as gpu:
        outcomes = open_loop(sender(server, mode, steps, size), offsets)
    records = [asdict(o) for o in outcomes]
    return {**summarize_run(records, gpu.mean), "request_records": records}


def run(args: argparse.Namespace) -> dict:
    """Build, serve, measure capacity, run every (round, load, mode), write results.json and chart.png."""
    from bench.variants import build_variant, machine_info
    from scripts.torchserve_control import TorchServe, loopback_addresses, write_config

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sdxl-openloop-"))
    batch_size = args.batch_size
    steps = request_mix(max(args.requests, args.capacity_requests, batch_size), args.steps_mix, args.seed)
    capacity_clients = args.capacity_clients or 2 * batch_size
    results: dict = {
        "suite": "continuous",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {
            **{k: v for k, v in vars(args).items() if k not in ("out", "ready_timeout")},
            "capacity_clients": capacity_clients,
            "request_steps": steps[: args.requests],
        },
    }

    # 1. The model folder (tiny: built offline from code; or a diffusers folder) and the two models.
    if args.model == "tiny":
        from handler.model.tiny_model import save_tiny_pipeline

        model_dir = save_tiny_pipeline(work / "tiny-sdxl")
    elif args.model == "full":  # SDXL base 1.0's architecture, random weights (bench/full_sdxl.py), for a GPU
        import torch

        from bench.full_sdxl import build_full_size_pipeline

        model_dir = work / "sdxl-full"
        build_full_size_pipeline("cuda" if torch.cuda.is_available() else "cpu").save_pretrained(model_dir)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    else:
        model_dir = Path(args.model)
    store = work / "model_store"
    base_yaml = Path(args.config) if Path(args.config).is_file() else REPO_ROOT / "config" / args.config
    for mode, config in model_yamls(base_yaml, args).items():
        if mode in args.modes:
            build_variant(model_dir, config, mode, work)

    # 2. One TorchServe with both loaded (an idle worker costs no CPU).
    properties = write_config(
        work / "config.properties",
        {
            **loopback_addresses(),
            "load_models": ",".join(args.modes),
        },
    )
    server = TorchServe(workdir=work / "server", config=properties, model_store=store)
    server.start()
    runs: list[dict] = []
    try:
        for mode in args.modes:
            server.wait_ready(mode, timeout=args.ready_timeout)

        # 3. Warm each mode with one full batch, then its saturated throughput; capacity is the lower one.
        for mode in args.modes:
            warm(sender(server, mode, steps, args.size), batch_size)
        measured = {
            mode: capacity_rps(sender(server, mode, steps, args.size), capacity_clients, args.capacity_requests)
            for mode in CAPACITY_MODES
        }
        for mode, figures in measured.items():
            print(f"capacity {mode}: {figures['rps']} req/s ({figures['errors']} errors)", flush=True)
        capacity = min(figures["rps"] for figures in measured.values())
        if capacity <= 0:
            raise RuntimeError(f"no request succeeded while measuring capacity: {measured}; log:\n{server.log_tail()}")
        results["capacity"] = {
            "rps": capacity,
            "static_rps": measured["static"]["rps"],
            "continuous_rps": measured["continuous-inline"]["rps"],
            "requests": args.capacity_requests,
            "clients": capacity_clients,
            "runs": measured,
        }

        # 4. Rounds: at each load, the modes back to back on the same schedule; their order alternates.
        unit_offsets = arrival_schedule(args.requests, 1.0, args.seed)
        for round_index in range(args.rounds):
            order = args.modes if round_index % 2 == 0 else args.modes[::-1]
            for load in args.loads:
                rate = load * capacity
                offsets = [offset / rate for offset in unit_offsets]  # = arrival_schedule(N, rate, seed)
                for position, mode in enumerate(order):
                    figures = timed_run(server, mode, steps, offsets, args.size)
                    runs.append(
                        {"mode": mode, "load": load, "round": round_index, "position": position, "rate_rps": rate}
                        | figures
                    )
                    print(
                        f"round {round_index + 1} load {load} {mode}: p50 {figures['p50_latency_s']} s, "
                        f"p95 {figures['p95_latency_s']} s, first progress {figures['mean_first_progress_s']} s, "
                        f"{figures['images_per_s']} images/s, errors {figures['errors']}",
                        flush=True,
                    )
    finally:
        server.stop()

    # 5. Summaries and ratios, results.json, chart.png, the tables.
    results["runs"] = runs
    results["summaries"] = summaries(runs)
    results["ratios"] = ratios(runs)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    from bench.chart import draw_openloop

    draw_openloop(results, out / "chart.png")
    print(markdown(results))
    print(f"results: {out / 'results.json'}, chart: {out / 'chart.png'}")
    return results


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="tiny", help="tiny (default), full (SDXL base architecture, random weights) or a folder"
    )
    parser.add_argument(
        "--modes",
        type=lambda text: [m for m in MODES if m in text.split(",")],
        default=list(MODES),
        help=f"modes to run, from {','.join(MODES)} (default all; static and continuous-inline are always kept)",
    )
    parser.add_argument("--config", default="tiny-sdxl.yaml", help="base model yaml, in config/ or a path")
    parser.add_argument("--size", type=int, default=64, help="image width and height (default 64)")
    parser.add_argument("--steps-mix", type=ints, default=[4, 8, 16], help="step counts to draw from (default 4,8,16)")
    parser.add_argument("--batch-size", type=int, default=8, help="batchSize of both modes (default 8)")
    parser.add_argument("--max-batch-delay", type=int, default=50, help="maxBatchDelay, ms (default 50)")
    parser.add_argument(
        "--continuous-max-batch-delay",
        type=int,
        default=5,
        help="maxBatchDelay of the continuous modes, ms (default 5; waited only when nothing is in flight)",
    )
    parser.add_argument("--steps-per-call", type=int, default=1, help="continuous: steps per handler call (default 1)")
    parser.add_argument("--requests", type=int, default=32, help="requests per open-loop run (default 32)")
    parser.add_argument(
        "--loads", type=floats, default=[0.5, 0.8, 0.95], help="fractions of capacity (default 0.5,0.8,0.95)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds over every load and mode (default 2)")
    parser.add_argument("--capacity-requests", type=int, default=32, help="closed-loop requests (default 32)")
    parser.add_argument("--capacity-clients", type=int, default=0, help="closed-loop clients (default 2 x batch size)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mix and the arrivals (default 0)")
    parser.add_argument("--ready-timeout", type=float, default=600)
    parser.add_argument(
        "--out",
        default=str(REPO_ROOT / "bench" / "results" / f"{datetime.now():%Y-%m-%d}-cpu-continuous"),
        help="where results.json and chart.png go (default bench/results/<date>-cpu-continuous)",
    )
    args = parser.parse_args(argv)
    args.modes = [mode for mode in MODES if mode in {*args.modes, *CAPACITY_MODES}]
    run(args)


if __name__ == "__main__":
    main()
