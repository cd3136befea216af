#!/usr/bin/env bash
# The ONE command for a lent GPU machine (see README.md#benchmark). Prepare once per session, here:
#   echo /.devcarry/ >> .git/info/exclude
#   bash ../shared/gpu/pack-torchserve.sh pyyaml==6.0.2 requests==2.32.3 urllib3==2.2.3 idna==3.10 \
#        charset-normalizer==3.4.0 certifi==2024.8.30 matplotlib   # whatever the machine lacks
# then call the device tool's run with carry [".devcarry"] and: bash bench/gpu_device_run.sh
# Results land in $OUT/gpu/results.json with the log; commit them under bench/results/<date>-h200/.
set -euo pipefail
# shellcheck disable=SC1091
source .devcarry/activate.sh
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT/gpu"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu/nvidia-smi.csv"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee "$OUT/gpu/versions.txt"
timeout 560 python3 -m bench.gpu --out "$OUT/gpu" --work-dir /tmp "$@" 2>&1 | tee "$OUT/gpu/log.txt"
