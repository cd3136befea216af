#!/usr/bin/env bash
# Healthy when TorchServe's /ping says so. Token auth covers /ping too: the key comes from the key_file.json
# TorchServe wrote in its working directory (KEY_FILE; none when token auth is off), and an expired or rejected
# key is renewed through the management API on loopback (sdxl_client.torchserve_keys), so the probe holds for
# as long as the server runs, not only the key's first hour.
set -euo pipefail
exec python3 -m sdxl_client.keytool ping \
  --url "http://127.0.0.1:${INFERENCE_PORT:-8080}" \
  --management-url "http://127.0.0.1:${MANAGEMENT_PORT:-8081}" \
  --key-file "${KEY_FILE:-$PWD/key_file.json}"
