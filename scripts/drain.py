"""preStop hook: stop taking traffic, wait until TorchServe's queues are empty, then stop it.

TorchServe has no drain command. Its management API reports each model's queued requests
(jobQueueStatus.pendingRequests); a running batch ends within responseTimeout. The hook waits for the
endpoints to drop the pod, then until every queue has been empty on ``--idle-checks`` polls in a row,
bounded by ``--timeout`` (keep it below terminationGracePeriodSeconds), then runs ``torchserve --stop``.
Standard library only: it runs in the container next to TorchServe.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
import urllib.request
from pathlib import Path


def management_key(key_file: Path) -> str | None:
    return json.loads(key_file.read_text())["management"]["key"] if key_file.exists() else None


def pending_requests(url: str, key: str | None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    def get(path: str):
        with urllib.request.urlopen(urllib.request.Request(url + path, headers=headers), timeout=5) as response:
            return json.load(response)

    total = 0
    for model in get("/models")["models"]:
        for version in get(f"/models/{model['modelName']}"):
            total += version.get("jobQueueStatus", {}).get("pendingRequests", 0)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--management-url", default="http://127.0.0.1:8081")
    parser.add_argument("--key-file", type=Path, default=Path.home() / "key_file.json")
    parser.add_argument("--endpoint-grace", type=float, default=15, help="s for the Service to drop the pod")
    parser.add_argument("--timeout", type=float, default=320, help="s to wait for the queues at most")
    parser.add_argument("--poll", type=float, default=5)
    parser.add_argument("--idle-checks", type=int, default=3)
    args = parser.parse_args()

    time.sleep(args.endpoint_grace)
    deadline, idle = time.monotonic() + args.timeout, 0
    while time.monotonic() < deadline and idle < args.idle_checks:
        try:
            idle = idle + 1 if pending_requests(args.management_url, management_key(args.key_file)) == 0 else 0
        except OSError:
            idle += 1  # TorchServe already gone or not answering: nothing left to wait for
        time.sleep(args.poll)
    subprocess.run(["torchserve", "--stop"], check=False)


if __name__ == "__main__":
    main()
