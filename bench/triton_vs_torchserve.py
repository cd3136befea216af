"""Triton against TorchServe on the same load and the same core (CPU, tiny model by default).

    python -m bench.triton_vs_torchserve                 # 64 px, 4 steps, 8 clients, 48 requests, 3 rounds
    python -m bench.triton_vs_torchserve --model /models/sdxl-base-1.0 --config sdxl-base.yaml --size 1024 --gpu

Both servers get the model yaml's batching (TorchServe: batchSize / maxBatchDelay; Triton: max_batch_size,
preferred size and queue delay generated from them) and the same requests (fixed seeds). Reports images/s,
p50/p95 latency and the batch sizes the core saw (its own accounting), per server, median round.
Writes results.json into --out.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.direct import bench_request
from bench.loadgen import Sample, closed_loop, summarize
from bench.run import REPO_ROOT, served_sender
from bench.variants import machine_info, model_yaml
from scripts.build_archive import build_archive
from scripts.torchserve_control import MODEL_NAME, TorchServe, loopback_addresses, write_config
from scripts.triton_server import infer, start


def triton_sender(url: str, body_for):
    def send(index: int) -> Sample:
        body = dict(body_for(index))
        prompt, steps = body.pop("prompt"), body.pop("num_inference_steps")
        started = time.perf_counter()
        try:
            result = infer(url, prompt, steps, **body)
        except Exception:
            return Sample(time.perf_counter() - started, 500)
        return Sample(time.perf_counter() - started, 200, 1, result["batch"]["requests"], 0.0)

    return send


def measure(send, clients: int, requests: int) -> tuple[dict, list[int]]:
    for index in range(2):
        send(10_000 + index)
    samples, wall = closed_loop(send, clients, requests)
    return summarize(samples, wall), [s.executed_batch for s in samples]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="diffusers folder (default: the tiny model)")
    parser.add_argument("--config", default="tiny-sdxl.yaml")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results" / f"{datetime.now():%Y-%m-%d}-triton"))
    args = parser.parse_args(argv)
    out, work = Path(args.out), Path(tempfile.mkdtemp(prefix="sdxl-triton-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    config = model_yaml(REPO_ROOT / "config" / args.config, 4, 50, args.size, args.size, args.steps)
    config_path = work / "model.yaml"
    config_path.write_text(json.dumps(config))
    body_for = lambda i: bench_request(i, args.size, args.size, args.steps)  # noqa: E731

    if args.model is None:
        from handler.model.tiny_model import save_tiny_pipeline

        args.model = str(save_tiny_pipeline(work / "tiny-sdxl"))
    build_archive(args.model, config=config_path, export_path=work / "model_store", build_dir=work / "build")
    torchserve = TorchServe(
        workdir=work / "torchserve",
        config=write_config(work / "config.properties", {**loopback_addresses(), "load_models": MODEL_NAME}),
        model_store=work / "model_store",
    )
    torchserve.start()
    triton = None
    rounds: dict[str, list[dict]] = collections.defaultdict(list)
    try:
        torchserve.wait_ready(timeout=600)
        triton = start(work / "triton", config_path, args.model, gpu=args.gpu)
        senders = {
            "torchserve": served_sender(torchserve, MODEL_NAME, body_for),
            "triton": triton_sender(triton.url, body_for),
        }
        for index in range(args.rounds):
            for name, send in senders.items():
                summary, batches = measure(send, args.clients, args.requests)
                summary["batch_sizes_seen"] = dict(sorted(collections.Counter(batches).items()))
                rounds[name].append(summary)
                print(f"round {index + 1} {name}: {summary['images_per_s']} images/s, p50 {summary['p50_s']} s, "
                      f"p95 {summary['p95_s']} s, batches {summary['batch_sizes_seen']}", flush=True)  # fmt: skip
    finally:
        torchserve.stop()
        if triton is not None:
            triton.stop()
    median = {
        name: sorted(runs, key=lambda r: r["images_per_s"])[(len(runs) - 1) // 2] for name, runs in rounds.items()
    }
    pairs = zip(rounds["triton"], rounds["torchserve"], strict=True)
    per_round = [triton_run["images_per_s"] / served["images_per_s"] for triton_run, served in pairs]
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"batch_size": 4, "max_batch_delay_ms": 50},
        "servers": median,
        "rounds": dict(rounds),
        "triton_over_torchserve_images_per_s": {
            "median": round(statistics.median(per_round), 3),
            "rounds": [round(r, 3) for r in per_round],
        },
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({"servers": median, "ratio": results["triton_over_torchserve_images_per_s"]}, indent=2))


if __name__ == "__main__":
    main()
