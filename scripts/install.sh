#!/usr/bin/env bash
# Install sdxl-torchserve and its tools into ./.venv (VENV=... elsewhere; the Dockerfile runs this too).
# torch is installed FIRST and pinned: a package that pulls an unpinned torch before it would download a
# multi-GB CUDA build. On a GPU machine, install your CUDA build of torch first and set TORCH_SPEC="" to keep it.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_SPEC="${TORCH_SPEC-torch==2.13.0}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-}"   # e.g. https://download.pytorch.org/whl/cu124 for a CUDA build
EXTRAS="${EXTRAS:-dev}"
VENV="${VENV:-.venv}"

if ! command -v java >/dev/null 2>&1; then
  echo "installing Java 17 (TorchServe's frontend) ..."
  if command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless) >/dev/null
  else
    echo "Java 17+ is required: install it with your package manager" >&2
    exit 1
  fi
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
if [ -n "$TORCH_SPEC" ]; then
  python -m pip install -q "$TORCH_SPEC" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
python -m pip install -q ${EDITABLE--e} ".[${EXTRAS}]"
python - <<'PY'
import torch, diffusers, transformers
print(f"installed: torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}")
PY
