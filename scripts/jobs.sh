#!/usr/bin/env bash
# The async job API on top of the quickstart's TorchServe (run scripts/quickstart.sh first): Redis, the gateway
# on 127.0.0.1:8090 and a dispatcher in the background, then one job submitted, followed and saved.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python scripts/jobs_server.py demo "$@"
