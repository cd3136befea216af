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

# System tools, with apt-get where they are missing: Java 17 (TorchServe's frontend) and Prometheus (its
# server and promtool: the monitoring tests run the real thing). SKIP_PROMETHEUS=1 leaves it out (images).
packages=()
command -v java >/dev/null 2>&1 || packages+=(openjdk-17-jre-headless)
[ -n "${SKIP_PROMETHEUS:-}" ] || command -v promtool >/dev/null 2>&1 || packages+=(prometheus)
# The async job API's queue (tests start their own on loopback) and the browser its web page is tested in.
# SKIP_REDIS=1 / SKIP_BROWSER=1 leave them out (images that use an external Redis, no browser tests).
[ -n "${SKIP_REDIS:-}" ] || command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
[ -n "${SKIP_BROWSER:-}" ] || command -v chromedriver >/dev/null 2>&1 || packages+=(chromium chromium-driver)
if [ ${#packages[@]} -gt 0 ]; then
  echo "installing ${packages[*]} ..."
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "install ${packages[*]} with your package manager (Java 17+; Prometheus 2.x for the tests)" >&2
    exit 1
  fi
  # Keep the packages' services from starting (Debian's prometheus would listen on 0.0.0.0:9090): the
  # tests start their own servers on loopback.
  no_start=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && no_start=1
  fi
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${packages[@]}") >/dev/null
  [ -z "$no_start" ] || rm -f /usr/sbin/policy-rc.d
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
if [ -n "$TORCH_SPEC" ]; then
  # -qq: errors only (a pip config with missing find-links folders warns once per package)
  python -m pip install -qq "$TORCH_SPEC" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
python -m pip install -qq ${EDITABLE--e} ".[${EXTRAS}]"
python - <<'PY'
import torch, diffusers, transformers
print(f"installed: torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}")
PY
