"""The job API installs and serves without torch: ``pip install .[jobs]`` into a fresh virtual environment (what
the gateway's CPU-only pods need), and that environment's gateway checks submits with the whole contract,
prompt tokens included, against a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import requests

from scripts.jobs_control import JobProcess, RedisServer, write_jobs_config
from scripts.torchserve_control import REPO_ROOT

pytestmark = pytest.mark.jobs


def test_the_gateway_installs_and_serves_from_a_venv_without_torch(tmp_path, model_store):
    # 1. A fresh venv with the jobs extra only, installed from this checkout (not editable).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", f"{REPO_ROOT}[jobs]"],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
        cwd=tmp_path,
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]
    installed = subprocess.run(
        [python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, env=env, check=True
    ).stdout.lower()
    assert "torch==" not in installed and "diffusers==" not in installed, installed
    imports = "import sys, jobs.gateway, jobs.dispatcher; assert 'torch' not in sys.modules, 'torch imported'"
    assert subprocess.run([python, "-c", imports], cwd=tmp_path, env=env).returncode == 0

    # 2. Its gateway serves, with the model's tokenizers (the tiny model beside the test archive).
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    (tmp_path / "jobs_keys.json").write_text(json.dumps({"default": "key-default-0123456789"}))
    config = write_jobs_config(
        tmp_path,
        redis_url=redis.url,
        model_yaml=str(REPO_ROOT / "config" / "tiny-sdxl.yaml"),
        tokenizer_path=str(model_store.parent / "build" / "tiny-sdxl"),
    )
    gateway = JobProcess("gateway", config, tmp_path, python=python, env={"PYTHONPATH": ""})
    try:
        gateway.start()
        headers = {"Authorization": "Bearer key-default-0123456789", "Content-Type": "application/json"}

        def submit(body: dict) -> requests.Response:
            return requests.post(f"{gateway.url}/generate", data=json.dumps(body), headers=headers, timeout=30)

        assert submit({"prompt": "a lighthouse", "seed": 1}).status_code == 202
        pair = submit({"prompt": "x", "sampler": "ddim", "schedule": "karras"})
        assert pair.status_code == 400 and pair.json()["error"]["field"] == "schedule", pair.text
        long_prompt = submit({"prompt": " ".join(["fox"] * 150)})  # 300 tokens: past max_prompt_chunks (225)
        assert long_prompt.status_code == 400 and "tokens" in long_prompt.json()["error"]["message"], long_prompt.text
        assert "tokens" in long_prompt.json()["error"]["message"]
    finally:
        gateway.stop()
        redis.stop()
