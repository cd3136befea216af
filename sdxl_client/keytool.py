"""``python -m sdxl_client.keytool ping|key``: the healthcheck behind every probe, and a valid inference key for
curl, both renewing an expired key (sdxl_client.torchserve_keys). Standard library only."""

from __future__ import annotations

import argparse
import os
import sys

from .torchserve_keys import APIS, TorchServeKeys, http_get, key_rejected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="TorchServe keys that stay valid: a healthcheck and a key printer.")
    parser.add_argument("command", choices=("ping", "key"), help="ping: exit 0 when Healthy; key: print one")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="TorchServe's inference address")
    parser.add_argument("--management-url", default="http://127.0.0.1:8081")
    parser.add_argument("--key-file", default=os.environ.get("KEY_FILE", "key_file.json"))
    parser.add_argument("--api", choices=APIS, default="inference", help="which key `key` prints")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    keys = TorchServeKeys(args.key_file, args.management_url, timeout_s=args.timeout)
    if args.command == "key":
        print(keys.key(args.api) or "")
        return 0
    try:
        status, body = keys.call(
            lambda headers: http_get(f"{args.url.rstrip('/')}/ping", headers, args.timeout),
            lambda answer: key_rejected(*answer),
        )
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    healthy = status == 200 and b'"Healthy"' in body
    if not healthy:
        print(f"unhealthy: HTTP {status} {body[:200].decode(errors='replace')}", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    raise SystemExit(main())
