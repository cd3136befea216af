#!/usr/bin/env bash
# Healthy when TorchServe's /ping says so. Token auth covers /ping too, so the key is read from the
# key_file.json the server wrote in its working directory (none when token auth is off).
set -euo pipefail
key_file="${KEY_FILE:-$HOME/key_file.json}"
auth=()
if [ -f "$key_file" ]; then
  key=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["inference"]["key"])' "$key_file")
  auth=(-H "Authorization: Bearer $key")
fi
curl -fsS --max-time 5 "${auth[@]}" "http://127.0.0.1:${INFERENCE_PORT:-8080}/ping" | grep -q '"Healthy"'
