#!/usr/bin/env bash
# One command from a fresh clone to an image: install, build the tiny model and its archive, start
# TorchServe on 127.0.0.1, send a real request and save the image. TorchServe keeps running afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/python scripts/server.py demo "$@"
