#!/usr/bin/env bash
# One command from a fresh clone to an image: install, build the tiny model and its archive, start
# TorchServe on 127.0.0.1, send a real request and save the image. TorchServe keeps running afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
# What serving needs: Java (TorchServe) and Redis (scripts/jobs.sh, next); the browser and Prometheus are for
# the tests, which scripts/test.sh installs. The serving extras only (the test command adds the rest).
SKIP_BROWSER=1 SKIP_PROMETHEUS=1 EXTRAS="${EXTRAS:-serve,client,jobs}" bash scripts/install.sh
.venv/bin/python scripts/server.py demo "$@"
