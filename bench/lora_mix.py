"""Many LoRAs on one server: mixed-adapter batching against grouping by adapter and one LoRA at a time.

    python -m bench.lora_mix                        # CPU, tiny model, 4 rank-8 LoRAs, 8 clients, 48 requests x 2
    python -m bench.lora_mix --memory-requests 400  # and a longer eviction run for the memory figure

Closed loop, 8 clients; request i uses LoRA i % 4 (fixed seeds). Variants, one TorchServe:
  mixed-b4     batchSize 4, lora_batching mixed: every row's LoRA routed inside one shared forward
  grouped-b4   batchSize 4, lora_batching grouped: one forward per LoRA set (PEFT's own path)
  one-lora-b1  batchSize 1, max_loaded_loras 1: one request and one loaded LoRA at a time (cog's way)
  no-lora-b4   the same requests without LoRAs (what the LoRAs cost at all)
Then, in-process, a long mixed run over 6 LoRAs with max_loaded_loras 2 (every few requests evict and load):
the process's resident memory every --memory-every requests, to show eviction does not leak.
Writes results.json into --out.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import psutil

from bench.direct import bench_request
from bench.loadgen import closed_loop, summarize
from bench.lora_overhead import make_lora
from bench.run import REPO_ROOT, served_sender
from bench.variants import build_variant, machine_info, model_yaml
from scripts.torchserve_control import TorchServe, loopback_addresses, write_config

VARIANTS = {  # name: (batchSize, handler settings, uses LoRAs)
    "mixed-b4": (4, {"lora_batching": "mixed", "max_loaded_loras": 4}, True),
    "grouped-b4": (4, {"lora_batching": "grouped", "max_loaded_loras": 4}, True),
    "one-lora-b1": (1, {"max_loaded_loras": 1}, True),
    "no-lora-b4": (4, {"max_loaded_loras": 4}, False),
}


def lora_body(index: int, size: int, steps: int, names: list[str], with_lora: bool) -> dict:
    body = bench_request(index, size, size, steps)
    return {**body, "loras": [{"name": names[index % len(names)]}]} if with_lora else body


def served(args: argparse.Namespace, work: Path, model_dir: Path, catalogue: dict) -> dict:
    names = list(catalogue)
    for name, (batch_size, handler, _) in VARIANTS.items():
        config = model_yaml(REPO_ROOT / "config" / "tiny-sdxl.yaml", batch_size, 50, args.size, args.size, args.steps)
        config["handler"].update(handler, lora_catalogue=catalogue)
        build_variant(model_dir, config, name, work)
    config = write_config(work / "config.properties", {**loopback_addresses(), "load_models": ",".join(VARIANTS)})
    server = TorchServe(workdir=work / "server", config=config, model_store=work / "model_store")
    server.start()
    rounds: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    try:
        for name in VARIANTS:
            server.wait_ready(name, timeout=600)
        for index in range(args.rounds):
            for name, (_, _, with_lora) in VARIANTS.items():
                send = served_sender(server, name, lambda i, w=with_lora: lora_body(i, args.size, args.steps, names, w))
                for warm in range(len(names)):  # every LoRA loaded once before timing (one-lora-b1 reloads anyway)
                    send(10_000 + warm)
                samples, wall = closed_loop(send, args.clients, args.requests)
                summary = summarize(samples, wall)
                rounds[name].append(summary)
                print(f"round {index + 1} {name}: {summary['images_per_s']} images/s, p50 {summary['p50_s']} s, "
                      f"p95 {summary['p95_s']} s, batch {summary['mean_executed_batch']}", flush=True)  # fmt: skip
    finally:
        server.stop()
    median = {
        name: sorted(runs, key=lambda r: r["images_per_s"])[(len(runs) - 1) // 2] for name, runs in rounds.items()
    }
    base = median["mixed-b4"]["images_per_s"]
    return {
        "variants": median,
        "rounds": rounds,
        "images_per_s_over_mixed": {name: round(run["images_per_s"] / base, 3) for name, run in median.items()},
    }


def memory(args: argparse.Namespace, work: Path, model_dir: Path) -> dict:
    """RSS over a long run whose LoRAs keep being evicted and loaded again (6 LoRAs, 2 kept)."""
    from handler.contract.settings import CatalogueLora, HandlerSettings
    from handler.model.loading import load_pipeline
    from handler.runtime.core import Core

    paths = {f"m{i}": make_lora(work / f"m{i}", 100 + i, args.rank) for i in range(6)}
    config = model_yaml(REPO_ROOT / "config" / "tiny-sdxl.yaml", 4, 50, args.size, args.size, args.steps)
    settings = HandlerSettings.from_yaml(config)
    limits = settings.limits.__class__(**{**settings.limits.__dict__, "catalogue": tuple((n, 1.0) for n in paths)})
    settings = settings.with_changes(
        lora_catalogue={n: CatalogueLora(p) for n, p in paths.items()}, max_loaded_loras=2, limits=limits
    )
    core = Core(load_pipeline(str(model_dir), settings), settings)
    names, process, samples = list(paths), psutil.Process(), []
    for start in range(0, args.memory_requests, 4):
        bodies = [lora_body(i, args.size, args.steps, names, True) for i in range(start, start + 4)]
        second = names[(start // 4 + 3) % len(names)]
        if second != bodies[1]["loras"][0]["name"]:  # one request in four with two LoRAs
            bodies[1]["loras"].append({"name": second})
        replies = core.handle([{"body": json.dumps(body).encode()} for body in bodies])
        assert all(reply.status == 200 for reply in replies), [r.body[:200] for r in replies if r.status != 200]
        if (start + 4) % args.memory_every == 0:
            gc.collect()
            samples.append({"requests": start + 4, "rss_mb": round(process.memory_info().rss / 2**20, 1)})
    stats = core.denoiser.loras.stats
    after_warm = [s["rss_mb"] for s in samples[len(samples) // 4 :]]
    return {
        "loras": len(paths),
        "max_loaded_loras": 2,
        "requests": args.memory_requests,
        "loads": stats.loads,
        "evictions": stats.evictions,
        "hits": stats.hits,
        "load_ms_median": round(statistics.median(stats.load_ms), 1),
        "rss_mb": samples,
        "rss_growth_mb_after_first_quarter": round(after_warm[-1] - after_warm[0], 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--memory-requests", type=int, default=240)
    parser.add_argument("--memory-every", type=int, default=20)
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results" / f"{datetime.now():%Y-%m-%d}-loras"))
    args = parser.parse_args(argv)
    from handler.model.tiny_model import save_tiny_pipeline

    out, work = Path(args.out), Path(tempfile.mkdtemp(prefix="sdxl-lora-mix-"))
    out.mkdir(parents=True, exist_ok=True)
    model_dir = save_tiny_pipeline(work / "tiny-sdxl")
    catalogue = {f"l{i}": {"path": make_lora(work / f"l{i}", i + 1, args.rank), "scale": 0.8} for i in range(4)}
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "served": served(args, work, model_dir, catalogue),
        "memory": memory(args, work, model_dir),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({"ratios": results["served"]["images_per_s_over_mixed"], "memory": results["memory"]}, indent=2))


if __name__ == "__main__":
    main()
