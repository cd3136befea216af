#!/usr/bin/env bash
# The ONE command for a lent GPU machine (see README.md#benchmark). Prepare once per session, here:
#   echo /.devcarry/ >> .git/info/exclude
#   bash ../shared/gpu/pack-torchserve.sh pyyaml==6.0.2 requests==2.32.3 urllib3==2.2.3 idna==3.10 \
#        charset-normalizer==3.4.0 certifi==2024.8.30 matplotlib   # whatever the machine lacks
# then call the device tool's run with carry [".devcarry"] and: bash bench/gpu_device_run.sh
# (SUITE=continuous bash bench/gpu_device_run.sh: static vs continuous batching instead, ~5 min).
# Results land in $OUT/gpu/results.json with the log; commit them under bench/results/<date>-h200/.
set -euo pipefail
# shellcheck disable=SC1091
source .devcarry/activate.sh
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT/gpu"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu/nvidia-smi.csv"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee "$OUT/gpu/versions.txt"
if [ "${SUITE:-gpu}" = continuous ]; then
  # Static vs continuous batching on full-size SDXL at 1024 px, open-loop arrivals at 80 % of capacity.
  mkdir -p "$OUT/gpu-continuous"
  timeout 560 python3 -m bench.openloop --model full --config sdxl-base.yaml --size 1024 --steps-mix 20,30,50 \
    --batch-size 8 --loads 0.8 --rounds 2 --requests 16 --capacity-requests 16 \
    --out "$OUT/gpu-continuous" "$@" 2>&1 | tee "$OUT/gpu-continuous/log.txt"
  exit 0
fi
timeout 560 python3 -m bench.gpu --out "$OUT/gpu" --work-dir /tmp "$@" 2>&1 | tee "$OUT/gpu/log.txt"
