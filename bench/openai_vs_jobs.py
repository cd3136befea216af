"""OpenAI's /v1/images/generations against our own POST /generate + wait, on the same stack and the same load.

    python -m bench.openai_vs_jobs     # tiny model, 64 px, 4 steps, 8 clients, 48 requests per round, 3 rounds

Our own path: POST /generate with ``Prefer: wait=60`` (200 with the finished job), then GET its image. The
OpenAI path: one POST answering with the image (b64_json). Rounds alternate the two; writes results.json into
--out with images/s, p50/p95 and the ratio per round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import requests

from bench.jobs_vs_direct import latencies
from bench.loadgen import Sample, closed_loop, summarize
from bench.run import REPO_ROOT
from bench.variants import machine_info
from scripts.build_archive import build_archive
from scripts.torchserve_control import TorchServe, loopback_addresses, write_config
from tests.integration.jobs_stack import JobStack


def sender(stack: JobStack, openai_route: bool):
    local = threading.local()

    def send(index: int) -> Sample:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        session, headers = local.session, {**stack.headers(), "Content-Type": "application/json"}
        body = {"prompt": f"benchmark prompt {index}", "seed": index, "num_inference_steps": 4}
        started = time.perf_counter()
        if openai_route:
            answer = session.post(f"{stack.gateway.url}/v1/images/generations", data=json.dumps(body),
                                  headers=headers, timeout=120)  # fmt: skip
            ok = answer.status_code == 200 and len(answer.json()["data"]) == 1
            return Sample(time.perf_counter() - started, answer.status_code, 1 if ok else 0)
        answer = session.post(f"{stack.gateway.url}/generate", data=json.dumps(body),
                              headers={**headers, "Prefer": "wait=60"}, timeout=120)  # fmt: skip
        if answer.status_code != 200:
            return Sample(time.perf_counter() - started, answer.status_code)
        image = session.get(answer.json()["image_url"], headers=headers, timeout=60)
        return Sample(time.perf_counter() - started, image.status_code, 1 if image.ok else 0)

    return send


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "2026-12-07-openai")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-openai-"))
    build_archive("tiny", export_path=root / "model_store", build_dir=root / "build")
    config = write_config(root / "config.properties", loopback_addresses())
    server = TorchServe(workdir=root / "ts", config=config, model_store=root / "model_store")
    server.start()
    server.wait_ready(timeout=300)
    results: dict = {"machine": machine_info(), "when": datetime.now(timezone.utc).isoformat(), "rounds": []}
    stack = JobStack(root / "jobs", server, settings={"max_open_per_key": 100_000, "max_queued": 100_000})
    try:
        stack.start()
        for route in (False, True):  # warm both paths
            closed_loop(sender(stack, route), args.clients, 8)
        for _ in range(args.rounds):
            ours, ours_wall = closed_loop(sender(stack, False), args.clients, args.requests)
            theirs, theirs_wall = closed_loop(sender(stack, True), args.clients, args.requests)
            o, t = (
                {**summarize(ours, ours_wall), **latencies(ours)},
                {**summarize(theirs, theirs_wall), **latencies(theirs)},
            )
            results["rounds"].append({"generate_wait": o, "openai": t,
                                      "ratio": round(t["images_per_s"] / o["images_per_s"], 3)})  # fmt: skip
            print(json.dumps(results["rounds"][-1]))
    finally:
        stack.stop()
        server.stop()
    ratios = [r["ratio"] for r in results["rounds"]]
    results["median_ratio"] = statistics.median(ratios)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out / 'results.json'}; openai/generate images/s ratio per round {ratios}")


if __name__ == "__main__":
    main()
