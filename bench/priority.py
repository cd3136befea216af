"""Priorities and deadlines under overload: static FIFO, continuous FIFO and continuous with a step policy, on the
same Poisson arrivals at fractions of capacity.

    python -m bench.priority                                   # CPU, tiny model (~10 min here)
    python -m bench.priority --loads 1.3 --requests 24 --out /tmp/prio-smoke

The mix: 20 % high priority (priority 5, ``--high-steps`` 4 steps), 80 % low (priority 0, ``--low-steps``);
every request has a deadline of ``--deadline-factor`` x its class's unloaded latency (measured first, alone).
Modes, one TorchServe: ``static-fifo`` (batchSize B), ``continuous-fifo`` (continuousBatching, batchSize B),
and per ``--policies`` ``continuous-<policy>``: batchSize ``--admit-factor`` x B admitted (a new request must get
in to be chosen: with 2B, parked low-priority requests filled the slots under overload and the urgent ones
queued in TorchServe, FIFO), ``max_rows_per_step`` = 2B rows (B guided requests step), ``step_policy``
<policy>. Capacity: continuous-fifo's closed-loop rate on the mix. Reported per
(load, mode): p95 latency per class, deadline attainment (finished within the deadline; refused = missed),
refusals (503), images/s. Writes results.json into --out and prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import requests

from bench.openloop_load import arrival_schedule, capacity_rps, open_loop, send_streamed
from bench.variants import build_variant, machine_info, model_yaml

REPO_ROOT = Path(__file__).resolve().parent.parent


def classes(count: int) -> list[str]:
    """Request i's class: every fifth one "high" (20 %, spread through the run), the others "low"."""
    return ["high" if index % 5 == 2 else "low" for index in range(count)]


def body(index: int, kind: str, args: argparse.Namespace, deadlines: dict[str, float] | None) -> dict:
    steps = args.high_steps if kind == "high" else args.low_steps
    request = {"prompt": f"priority benchmark {index}: a lighthouse at dawn", "seed": index, "stream": True,
               "num_inference_steps": steps, "width": args.size, "height": args.size,
               "priority": 5 if kind == "high" else 0}  # fmt: skip
    if deadlines is not None:
        request["deadline_s"] = round(deadlines[kind], 3)
    return request


def sender(server, model: str, kinds: list[str], args: argparse.Namespace, deadlines: dict[str, float] | None):
    url = f"{server.inference_url}/predictions/{model}"
    headers = {"Content-Type": "application/json", **server.headers("inference")}
    local = threading.local()

    def send(index: int, origin: float):
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return send_streamed(local.session, url, headers, body(index, kinds[index], args, deadlines), origin, index)

    return send


def p95(values: list[float]) -> float | None:
    return round(statistics.quantiles(values, n=20)[-1], 3) if len(values) >= 2 else (values[0] if values else None)


def summarize(outcomes: list, kinds: list[str], deadlines: dict[str, float]) -> dict:
    wall = max((o.done_s or o.sent_s) for o in outcomes) - min(o.sent_s for o in outcomes)
    figures: dict = {"images_per_s": round(sum(o.images for o in outcomes) / wall, 3) if wall > 0 else None}
    met = [o.status == 200 and o.latency_s <= deadlines[kinds[o.index]] for o in outcomes]
    figures["deadline_attainment"] = round(sum(met) / len(outcomes), 3)
    figures["refused_503"] = sum(o.status == 503 for o in outcomes)
    figures["errors"] = sum(o.status not in (200, 503) for o in outcomes)
    for kind in ("high", "low"):
        latencies = [o.latency_s for o in outcomes if kinds[o.index] == kind and o.status == 200]
        figures[f"{kind}_p95_s"] = p95(latencies)
        mine = [m for o, m in zip(outcomes, met, strict=True) if kinds[o.index] == kind]
        figures[f"{kind}_attainment"] = round(sum(mine) / len(mine), 3) if mine else None
    return figures


def run(args: argparse.Namespace) -> dict:
    from handler.model.tiny_model import save_tiny_pipeline
    from scripts.torchserve_control import TorchServe, loopback_addresses, write_config

    out, work = Path(args.out), Path(tempfile.mkdtemp(prefix="sdxl-priority-"))
    out.mkdir(parents=True, exist_ok=True)
    batch = args.batch_size
    base = model_yaml(REPO_ROOT / "config" / "tiny-sdxl.yaml", batch, 50, args.size, args.size, args.high_steps)
    base["handler"]["limits"]["max_inference_steps"] = max(args.low_steps, args.high_steps)
    base["handler"]["warmup"] = [{"width": args.size, "height": args.size, "num_inference_steps": 2}]
    configs = {"static-fifo": base, "continuous-fifo": copy.deepcopy(base)}
    configs["continuous-fifo"].update(continuousBatching=True, maxBatchDelay=5)
    for policy in args.policies:
        config = copy.deepcopy(configs["continuous-fifo"])
        config["batchSize"] = args.admit_factor * batch
        config["handler"].update(step_policy=policy, max_rows_per_step=2 * batch)
        configs[f"continuous-{policy}"] = config

    # 1. The tiny model, every mode on one TorchServe.
    model_dir = save_tiny_pipeline(work / "tiny-sdxl")
    for mode, config in configs.items():
        build_variant(model_dir, config, mode, work)
    properties = write_config(work / "config.properties", {**loopback_addresses(), "load_models": ",".join(configs)})
    server = TorchServe(workdir=work / "server", config=properties, model_store=work / "model_store")
    server.start()
    count = max(args.requests, args.capacity_requests)
    kinds = classes(count)
    results: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(),
                     "settings": {k: v for k, v in vars(args).items() if k != "out"}, "runs": []}  # fmt: skip
    try:
        for mode in configs:
            server.wait_ready(mode, timeout=600)
        # 2. Unloaded latency per class (alone, continuous-fifo), the deadlines, and capacity.
        alone = sender(server, "continuous-fifo", ["high", "low"], args, None)
        unloaded = {kind: statistics.median(alone(i, time.perf_counter()).latency_s for _ in range(3))
                    for i, kind in enumerate(("high", "low"))}  # fmt: skip
        deadlines = {kind: args.deadline_factor * latency for kind, latency in unloaded.items()}
        mix = sender(server, "continuous-fifo", kinds, args, None)
        capacity = capacity_rps(mix, 2 * batch, args.capacity_requests)["rps"]
        results.update(unloaded_s=unloaded, deadlines_s=deadlines, capacity_rps=round(capacity, 3))
        print(f"unloaded {unloaded}, deadlines {deadlines}, capacity {capacity:.2f} req/s", flush=True)
        # 3. Each load, each mode on the same arrivals (order alternating per load).
        unit = arrival_schedule(args.requests, 1.0, args.seed)
        for position, load in enumerate(args.loads):
            offsets = [offset / (load * capacity) for offset in unit]
            modes = list(configs) if position % 2 == 0 else list(configs)[::-1]
            for mode in modes:
                outcomes = open_loop(sender(server, mode, kinds, args, deadlines), offsets)
                figures = summarize(outcomes, kinds, deadlines)
                results["runs"].append({"load": load, "mode": mode, **figures})
                print(f"load {load} {mode}: {figures}", flush=True)
    finally:
        server.stop()
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    return results


def markdown(results: dict) -> str:
    rows = ["| load | mode | high p95 s | low p95 s | deadlines met | high met | refused | images/s |",
            "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results["runs"]:
        rows.append(
            f"| {r['load']} | {r['mode']} | {r['high_p95_s']} | {r['low_p95_s']} | "
            f"{r['deadline_attainment']} | {r['high_attainment']} | {r['refused_503']} | {r['images_per_s']} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="image side (default 64)")
    parser.add_argument("--batch-size", type=int, default=4, help="B: batchSize of the FIFO modes (default 4)")
    parser.add_argument("--high-steps", type=int, default=4, help="steps of a high-priority request (default 4)")
    parser.add_argument("--low-steps", type=int, default=20, help="steps of a low-priority request (default 20)")
    parser.add_argument("--deadline-factor", type=float, default=3.0, help="deadline = this x unloaded (default 3)")
    parser.add_argument("--policies", type=lambda t: t.split(","), default=["priority", "slack"],
                        help="step policies to compare with FIFO (default priority,slack)")  # fmt: skip
    parser.add_argument("--loads", type=lambda t: [float(x) for x in t.split(",")], default=[0.8, 1.0, 1.3])
    parser.add_argument("--requests", type=int, default=40, help="requests per open-loop run (default 40)")
    parser.add_argument("--capacity-requests", type=int, default=32, help="closed-loop requests (default 32)")
    parser.add_argument("--admit-factor", type=int, default=4,
                        help="policy modes admit this x B requests (batchSize) for B to step (default 4)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results" / f"{datetime.now():%Y-%m-%d}-priority"))
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
