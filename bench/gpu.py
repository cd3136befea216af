"""GPU benchmark: full-size SDXL (random weights) at 1024x1024, precision/attention/compile sweep in-process,
batch sizes for the best configuration, and that configuration served through TorchServe.

    python -m bench.gpu --out bench/results/2026-12-01-h200          # on the GPU machine (~6-8 min on an H200)
    python -m bench.gpu --model tiny --device cpu --size 64 --steps 4 --out /tmp/rehearsal   # rehearsal here

Reports s/image, images/s, peak GPU memory and the fraction of the GPU's dense bf16 peak reached, taking
281 TFLOP per image at 20 steps (SDXL base's computed cost, bench/full_sdxl.py).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml

from bench.direct import bench_request, direct_engine
from bench.full_sdxl import build_full_size_pipeline, tflop_per_image
from bench.loadgen import closed_loop, summarize
from bench.run import served_sender
from bench.variants import machine_info
from handler.contract.parse import parse_request
from scripts.build_archive import build_archive
from scripts.torchserve_control import TorchServe, loopback_addresses, write_config

REPO_ROOT = Path(__file__).resolve().parent.parent


def make_pipeline(model: str, device: str, dtype: torch.dtype):
    if model == "full":
        return build_full_size_pipeline(device=device, dtype=dtype)
    from handler.model.tiny_model import build_tiny_pipeline

    return build_tiny_pipeline().to(device=device, dtype=dtype)


def set_attention(pipeline, attention: str) -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0

    if attention == "xformers":
        pipeline.enable_xformers_memory_efficient_attention()
    else:
        pipeline.unet.set_attn_processor(AttnProcessor2_0())


def time_direct(pipeline, device: str, batch: int, steps: int, size: int, calls: int, peak_tflops: float) -> dict:
    """Warm once, then ``calls`` timed calls of ``batch`` images through the handler's own denoiser."""
    engine = direct_engine(pipeline, torch.device(device), batch)
    requests = [parse_request({**bench_request(i, size, size, steps), "guidance_scale": 5.0}) for i in range(batch)]
    engine.generate(requests)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(calls):
        engine.generate(requests)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds_per_image = (time.perf_counter() - started) / (calls * batch)
    result = {
        "batch_size": batch,
        "steps": steps,
        "size": size,
        "s_per_image": round(seconds_per_image, 4),
        "images_per_s": round(1 / seconds_per_image, 3),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None,
    }
    if peak_tflops:
        result["fraction_of_peak"] = round(tflop_per_image(steps, size, size) / seconds_per_image / peak_tflops, 3)
    return result


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    dtypes = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
    xformers = args.device.startswith("cuda") and importlib.util.find_spec("xformers") is not None
    attentions = ["sdpa", "xformers"] if xformers else ["sdpa"]
    results: dict = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": vars(args) | {"out": str(out)},
        "sweep": [],
        "batches": [],
    }

    def log(entry: dict) -> None:
        print(json.dumps(entry), flush=True)

    # 1. Precision x attention at batch 4, 20 steps (eager).
    best = None
    for dtype_name in args.dtypes:
        pipeline = make_pipeline(args.model, args.device, dtypes[dtype_name])
        for attention in attentions:
            set_attention(pipeline, attention)
            entry = {
                "dtype": dtype_name,
                "attention": attention,
                "compile": False,
                **time_direct(pipeline, args.device, 4, args.steps[0], args.size, args.calls, args.peak_tflops),
            }
            results["sweep"].append(entry)
            log(entry)
            if best is None or entry["images_per_s"] > best["images_per_s"]:
                best = entry
        del pipeline
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()

    # 2. The best eager configuration compiled, then batch sizes and step counts for the winner.
    pipeline = make_pipeline(args.model, args.device, dtypes[best["dtype"]])
    set_attention(pipeline, best["attention"])
    winner = dict(best)
    if args.compile:
        eager_unet = pipeline.unet
        pipeline.unet = torch.compile(eager_unet, mode=args.compile, dynamic=False)
        entry = {
            "dtype": best["dtype"],
            "attention": best["attention"],
            "compile": args.compile,
            **time_direct(pipeline, args.device, 4, args.steps[0], args.size, args.calls, args.peak_tflops),
        }
        results["sweep"].append(entry)
        log(entry)
        if entry["images_per_s"] > best["images_per_s"]:
            winner = entry
        else:
            pipeline.unet = eager_unet
    for steps in args.steps:
        for batch in args.batch_sizes:
            entry = {
                "dtype": winner["dtype"],
                "attention": winner["attention"],
                "compile": winner["compile"],
                **time_direct(pipeline, args.device, batch, steps, args.size, args.calls, args.peak_tflops),
            }
            results["batches"].append(entry)
            log(entry)
    results["best"] = max(results["batches"], key=lambda e: e["images_per_s"] if e["steps"] == args.steps[0] else 0)

    # 3. The winner served through TorchServe: weights saved once, the archive points at them.
    if args.served_requests:
        work = Path(tempfile.mkdtemp(prefix="sdxl-gpu-bench-", dir=args.work_dir))
        weights = work / "weights"
        pipeline.unet = getattr(pipeline.unet, "_orig_mod", pipeline.unet)
        pipeline.save_pretrained(weights)
        del pipeline
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        base = yaml.safe_load((REPO_ROOT / "config" / args.config).read_text())
        batch = results["best"]["batch_size"]
        base.update({"batchSize": batch, "maxBatchDelay": 50})
        section = base.setdefault("handler", {})
        section.update(
            {
                "dtype": winner["dtype"],
                "attention": winner["attention"],
                "compile_mode": winner["compile"] or None,
                "device": args.device.split(":")[0],
                "warmup": [
                    {"width": args.size, "height": args.size, "num_inference_steps": 2, "batch_images": b}
                    for b in sorted({1, batch})
                ],
            }
        )
        section["defaults"] = {
            **section.get("defaults", {}),
            "width": args.size,
            "height": args.size,
            "num_inference_steps": args.steps[0],
        }
        yaml_path = work / "model.yaml"
        yaml_path.write_text(yaml.safe_dump(base))
        store = work / "model_store"
        build_archive(
            str(weights),
            config=yaml_path,
            export_path=store,
            archive_format="no-archive",
            build_dir=work / "build",
            weights_by_path=True,
        )
        config = write_config(
            work / "config.properties",
            {
                **loopback_addresses(),
                "load_models": "stable-diffusion-xl",
            },
        )
        server = TorchServe(workdir=work / "server", config=config, model_store=store)
        server.start()
        try:
            server.wait_ready(timeout=args.ready_timeout)
            send = served_sender(
                server, "stable-diffusion-xl", lambda i: bench_request(i, args.size, args.size, args.steps[0])
            )
            for index in range(2):
                send(10_000 + index)
            samples, wall = closed_loop(send, args.clients, args.served_requests)
            served = summarize(samples, wall) | {"batch_size": batch, "clients": args.clients}
            if args.peak_tflops and served["images_per_s"]:
                served["fraction_of_peak"] = round(
                    tflop_per_image(args.steps[0], args.size, args.size) * served["images_per_s"] / args.peak_tflops, 3
                )
            results["served"] = served
            log({"served": served})
        finally:
            server.stop()
    if args.gpu_hourly_usd:
        for entry in [results["best"], results.get("served")]:
            if entry and entry.get("images_per_s"):
                entry["usd_per_1000_images"] = round(args.gpu_hourly_usd / 3600 / entry["images_per_s"] * 1000, 4)
    results["wall_s"] = round(time.perf_counter() - started, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {out / 'results.json'}")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["full", "tiny"], default="full")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtypes", type=lambda s: s.split(","), default=["float16", "bfloat16"])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",")], default=[20, 30])
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8])
    parser.add_argument("--calls", type=int, default=2, help="timed pipeline calls per point (default 2)")
    parser.add_argument("--compile", default="max-autotune-no-cudagraphs", help="torch.compile mode; '' skips it")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="dense bf16 TFLOP/s of the GPU (H200: ~790)")
    parser.add_argument("--gpu-hourly-usd", type=float, default=0.0, help="$/GPU-hour, for $/1000 images")
    parser.add_argument("--served-requests", type=int, default=32, help="served run's requests; 0 skips it")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--config", default="sdxl-base.yaml")
    parser.add_argument("--ready-timeout", type=float, default=600)
    parser.add_argument("--work-dir", default=None, help="scratch folder for the saved weights (default: TMPDIR)")
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results" / f"{datetime.now():%Y-%m-%d}-gpu"))
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
