#!/usr/bin/env bash
# Install, lint, and run every test that needs no GPU: unit tests and the real-TorchServe integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -m "not gpu" "$@"
