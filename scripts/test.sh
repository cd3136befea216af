#!/usr/bin/env bash
# Install, lint, and run every test that needs no GPU: unit tests and the real-TorchServe integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# shellcheck disable=SC1091
. .venv/bin/activate
ruff check .
ruff format --check .
python -m pytest -m "not gpu" "$@"
