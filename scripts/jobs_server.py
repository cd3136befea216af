"""Run the async job stack locally on top of the quickstart's TorchServe: Redis (AOF on), the gateway on
127.0.0.1:8090 and one dispatcher, in the background; ``demo`` also submits a job and saves its image.

    .venv/bin/python scripts/jobs_server.py demo      # start (if needed), submit, wait, save outputs/job.png
    .venv/bin/python scripts/jobs_server.py start | stop | status

State lives in ./jobs-data (Redis' append-only file, results, pids); API keys in ./jobs_keys.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from scripts.jobs_control import JobProcess, RedisServer, write_jobs_config  # noqa: E402

DATA = REPO_ROOT / "jobs-data"
PIDS = DATA / "pids.json"
GATEWAY_PORT = 8090
REDIS_PORT = 6390  # the demo's own Redis, beside any on 6379 (config/jobs.yaml's, for a Redis you run)


def start() -> dict:
    if PIDS.exists() and all(_alive(pid) for pid in json.loads(PIDS.read_text()).values()):
        print("the job stack is already running")
        return json.loads(PIDS.read_text())
    redis = RedisServer(DATA / "redis", port=REDIS_PORT)
    redis.start()
    config = write_jobs_config(
        DATA,
        redis_url=redis.url,
        model_yaml=str(REPO_ROOT / "config" / "tiny-sdxl.yaml"),
        tokenizer_path=str(REPO_ROOT / "build" / "tiny-sdxl"),  # the quickstart's tiny model (build_archive.py)
        api_keys_file=str(REPO_ROOT / "jobs_keys.json"),
        torchserve_key_file=str(REPO_ROOT / "key_file.json"),
    )
    gateway = JobProcess("gateway", config, DATA, port=GATEWAY_PORT).start()
    dispatcher = JobProcess("dispatcher", config, DATA).start()
    pids = {"redis": redis.process.pid, "gateway": gateway.process.pid, "dispatcher": dispatcher.process.pid}
    PIDS.write_text(json.dumps(pids))
    print(f"job API on {gateway.url} (web page: {gateway.url}/), keys in jobs_keys.json; logs in {DATA}")
    print(f"Redis (the demo's own) on {redis.url}; these settings: {config}")
    return pids


def stop() -> None:
    if not PIDS.exists():
        print("the job stack is not running")
        return
    pids = json.loads(PIDS.read_text())
    for name in ("dispatcher", "gateway", "redis"):  # the dispatcher drains first
        pid = pids.get(name)
        if pid and _alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 40
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
    PIDS.unlink()
    print("job stack stopped")


def demo(prompt: str, output: Path) -> None:
    from sdxl_client.jobs import JobsClient

    start()
    client = JobsClient(f"http://127.0.0.1:{GATEWAY_PORT}", keys_file=str(REPO_ROOT / "jobs_keys.json"))
    job = client.submit({"prompt": prompt, "seed": 42})
    print(f"submitted {job['job_id']} (queue position {job['queue_position']})")
    finished = client.wait(job["job_id"])
    if finished["status"] != "completed":
        raise SystemExit(f"job {finished['status']}: {finished.get('error')}")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(client.fetch(job["job_id"]))
    key = client.key
    print(
        f"saved {output} (seed {finished['seed']}); the job: curl -H 'Authorization: Bearer {key}' "
        f"http://127.0.0.1:{GATEWAY_PORT}/jobs/{job['job_id']}"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("start")
    sub.add_parser("stop")
    sub.add_parser("status")
    demo_parser = sub.add_parser("demo")
    demo_parser.add_argument("prompt", nargs="?", default="A beautiful sunset over mountains")
    demo_parser.add_argument("-o", "--output", type=Path, default=REPO_ROOT / "outputs" / "job.png")
    args = parser.parse_args(argv)
    if args.command == "start":
        start()
    elif args.command == "stop":
        stop()
    elif args.command == "status":
        running = PIDS.exists() and {n: _alive(p) for n, p in json.loads(PIDS.read_text()).items()}
        print(json.dumps(running or "not running"))
    else:
        demo(args.prompt, args.output)


if __name__ == "__main__":
    main()
