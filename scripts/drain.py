"""preStop hook: stop taking traffic, let every queued and running request finish, then stop TorchServe.

``torchserve --stop`` alone drops every request in flight (clients see a connection reset: tested). TorchServe
has no drain command, and its worker status reads READY even mid-batch, so this waits differently: a
``describe`` call (``GET /models/<name>?customized=true``) is a job in the model's own queue, answered only
after every request queued before it has been answered. Once the Service has dropped the pod
(``--endpoint-grace``), one describe per model, then an empty queue, means nothing is left in flight.
The management key expires like the inference key: it is renewed through the management API when rejected
(sdxl_client.torchserve_keys). Standard library and this package only: it runs in the container next to
TorchServe.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from sdxl_client.torchserve_keys import TorchServeKeys, http_get, key_rejected


def get(url: str, keys: TorchServeKeys, timeout: float):
    """The JSON of a management GET, sent with a valid management key."""
    status, body = keys.call(lambda headers: http_get(url, headers, timeout), lambda a: key_rejected(*a), "management")
    if status != 200:
        raise OSError(f"HTTP {status} from {url}: {body[:200].decode(errors='replace')}")
    return json.loads(body)


def drain(management_url: str, keys: TorchServeKeys, deadline: float) -> bool:
    """True once every model answered a describe with nothing queued behind it; False at the deadline."""
    while time.monotonic() < deadline:
        pending = 0
        for model in get(f"{management_url}/models", keys, 10)["models"]:
            url = f"{management_url}/models/{model['modelName']}"
            get(f"{url}?customized=true", keys, max(1.0, deadline - time.monotonic()))  # waits behind the queue
            pending += sum(v.get("jobQueueStatus", {}).get("pendingRequests", 0) for v in get(url, keys, 10))
        if pending == 0:
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--management-url", default="http://127.0.0.1:8081")
    parser.add_argument("--key-file", type=Path, default=Path("key_file.json"), help="default: ./key_file.json")
    parser.add_argument("--endpoint-grace", type=float, default=15, help="s for the Service to drop the pod")
    parser.add_argument("--timeout", type=float, default=320, help="s to wait at most (< terminationGracePeriod)")
    args = parser.parse_args(argv)

    time.sleep(args.endpoint_grace)
    try:
        keys = TorchServeKeys(args.key_file, args.management_url)
        drained = drain(args.management_url, keys, time.monotonic() + args.timeout)
    except OSError as exc:  # TorchServe already gone or not answering: nothing left to wait for
        print(f"drain: management API unavailable ({exc}); stopping")
        drained = True
    print("drain: all requests answered" if drained else "drain: timed out with requests still queued")
    beside = Path(sys.executable).parent / "torchserve"  # the venv's, even when it is not activated
    subprocess.run([str(beside) if beside.exists() else "torchserve", "--stop"], check=False)
    return 0 if drained else 1


if __name__ == "__main__":
    raise SystemExit(main())
