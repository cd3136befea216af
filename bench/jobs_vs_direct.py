"""The async job API against direct streamed /predictions, on the same TorchServe and the same load.

    python -m bench.jobs_vs_direct      # tiny model, 64 px, 4 steps, 8 clients, 48 requests per round, 2 rounds

Measures, per round: images/s and p50/p95 latency directly (``"stream": true``) and through the gateway
(submit, follow the SSE events, fetch the image); the latency the gateway adds (job p50/p95 minus direct);
then with no dispatcher: submit throughput and p99 (16 clients), and GET /jobs/{id} p99 with 10,000 jobs
queued. Writes results.json into --out.
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

from bench.loadgen import Sample, closed_loop, percentile, summarize
from bench.run import REPO_ROOT, served_sender
from bench.variants import machine_info
from scripts.build_archive import build_archive
from scripts.torchserve_control import MODEL_NAME, TorchServe, loopback_addresses, write_config
from tests.integration.jobs_stack import JobStack, parse_sse


def job_sender(stack: JobStack, body_for):
    local = threading.local()

    def send(index: int) -> Sample:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        session, headers = local.session, stack.headers()
        started = time.perf_counter()
        submitted = session.post(
            f"{stack.gateway.url}/generate",
            data=json.dumps(body_for(index)),
            headers={**headers, "Content-Type": "application/json"},
            timeout=60,
        )
        if submitted.status_code != 202:
            return Sample(time.perf_counter() - started, submitted.status_code)
        job_id = submitted.json()["job_id"]
        events = session.get(f"{stack.gateway.url}/jobs/{job_id}/events", headers=headers, stream=True, timeout=600)
        parse_sse(events.iter_lines(decode_unicode=True))
        image = session.get(f"{stack.gateway.url}/jobs/{job_id}/image", headers=headers, timeout=60)
        return Sample(time.perf_counter() - started, image.status_code, 1 if image.ok else 0)

    return send


def latencies(samples: list[Sample]) -> dict:
    values = [s.latency_s for s in samples if s.status == 200]
    return {
        "p50_s": round(percentile(values, 50), 4),
        "p95_s": round(percentile(values, 95), 4),
        "p99_s": round(percentile(values, 99), 4),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "2026-12-07-jobs")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    build_archive("tiny", export_path=root / "model_store", build_dir=root / "build")
    config = write_config(root / "config.properties", loopback_addresses())
    server = TorchServe(workdir=root / "ts", config=config, model_store=root / "model_store")
    server.start()
    server.wait_ready(timeout=300)
    results: dict = {"machine": machine_info(), "when": datetime.now(timezone.utc).isoformat(), "rounds": []}
    try:

        def body_for(i: int) -> dict:
            return {"prompt": f"benchmark prompt {i}", "seed": i, "num_inference_steps": 4}

        stack = JobStack(root / "jobs", server, settings={"max_open_per_key": 100_000, "max_queued": 100_000})
        stack.start()
        try:
            closed_loop(served_sender(server, MODEL_NAME, body_for, stream=True), args.clients, 8)  # warm
            closed_loop(job_sender(stack, body_for), args.clients, 8)
            for _ in range(args.rounds):
                direct, direct_wall = closed_loop(
                    served_sender(server, MODEL_NAME, body_for, stream=True), args.clients, args.requests
                )
                jobs, jobs_wall = closed_loop(job_sender(stack, body_for), args.clients, args.requests)
                d, j = summarize(direct, direct_wall), summarize(jobs, jobs_wall)
                dl, jl = latencies(direct), latencies(jobs)
                results["rounds"].append(
                    {
                        "direct": {**d, **dl},
                        "jobs": {**j, **jl},
                        "ratio": round(j["images_per_s"] / d["images_per_s"], 3),
                        "added_p50_s": round(jl["p50_s"] - dl["p50_s"], 4),
                        "added_p95_s": round(jl["p95_s"] - dl["p95_s"], 4),
                    }
                )
                print(json.dumps(results["rounds"][-1]))
        finally:
            stack.stop()
        # No dispatcher: how fast the gateway accepts, and how GET /jobs/{id} holds up with a deep queue.
        idle = JobStack(root / "idle", server, settings={"max_open_per_key": 100_000, "max_queued": 100_000})
        idle.start(dispatchers=0)
        try:
            ids: list[str] = []

            def submit(i: int) -> Sample:
                started = time.perf_counter()
                response = requests.post(
                    f"{idle.gateway.url}/generate",
                    data=json.dumps(body_for(i)),
                    headers={**idle.headers(), "Content-Type": "application/json"},
                    timeout=60,
                )
                ids.append(response.json().get("job_id"))
                return Sample(
                    time.perf_counter() - started, 200 if response.status_code == 202 else response.status_code, 1
                )

            samples, wall = closed_loop(submit, 16, args.queued)
            results["submit"] = {"jobs": args.queued, "per_s": round(args.queued / wall, 1), **latencies(samples)}
            print(json.dumps(results["submit"]))
            probe = [ids[i] for i in range(0, len(ids), max(len(ids) // 500, 1))]

            def get(i: int) -> Sample:
                started = time.perf_counter()
                response = requests.get(
                    f"{idle.gateway.url}/jobs/{probe[i % len(probe)]}", headers=idle.headers(), timeout=30
                )
                return Sample(time.perf_counter() - started, response.status_code, 1)

            samples, wall = closed_loop(get, 8, 2000)
            results["get_with_queue"] = {
                "queued": idle.depth()[0],
                "gets": 2000,
                "per_s": round(2000 / wall, 1),
                **latencies(samples),
            }
            print(json.dumps(results["get_with_queue"]))
        finally:
            idle.stop()
    finally:
        server.stop()
    ratios = [r["ratio"] for r in results["rounds"]]
    results["median_ratio"] = statistics.median(ratios)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out / 'results.json'}; jobs/direct images/s ratio per round {ratios}")


if __name__ == "__main__":
    main()
