"""The README's by-hand sequence (the design card's commands, literally), run as written from a copy of the
repository root right after a quickstart's archive build: build the tiny model, torch-model-archiver without a
yaml, torchserve --start with ./config.properties, curl with the token, torchserve --stop.

The copy's config.properties is the shipped one with only its listeners moved to free loopback ports, and
the curl goes to that port: tests never take the real 8080.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

from scripts.build_archive import build_archive
from scripts.torchserve_control import REPO_ROOT, TorchServe, loopback_addresses, write_config


def readme_block(name: str) -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    block = re.search(rf"<!-- {name}:start -->\n```bash\n(.*?)```\n<!-- {name}:end -->", readme, re.S)
    assert block, f"README has no {name} block"
    return block.group(1)


def run_block(script: str, root, output) -> None:
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    env.update(TEMP=str(root / "temp"), TMPDIR=str(root / "temp"))
    # TorchServe's java inherits stdout: a file, never a pipe.
    with open(output, "wb") as out:
        subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=root, env=env, stdout=out, stderr=out,
                       check=True, timeout=600)  # fmt: skip


def test_the_readme_by_hand_sequence_serves_a_request_from_the_repository_root(tmp_path):
    root = tmp_path / "repo"
    (root / "temp").mkdir(parents=True)
    (root / "model_store").mkdir()  # committed (empty) in the repository
    shutil.copytree(REPO_ROOT / "handler", root / "handler", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO_ROOT / "config", root / "config")
    addresses = loopback_addresses()
    write_config(root / "config.properties", addresses)
    # The quickstart's archive (scripts/server.py demo) is already built: the literal commands must still work.
    build_archive("tiny", export_path=root / "build" / "model_store", build_dir=root / "build")
    server = TorchServe(workdir=root, config=root / "config.properties", model_store=root / "model_store")
    try:
        started = time.monotonic()
        run_block(readme_block("by-hand-start"), root, root / "start.log")
        server.wait_ready(timeout=240)
        print(f"READY {time.monotonic() - started:.1f} s after torchserve --start")  # the 60 s: docs
        request = readme_block("by-hand-request").replace("http://127.0.0.1:8080", addresses["inference_address"])
        run_block(request, root, root / "request.log")
    except BaseException:
        print(server.log_tail(), (root / "start.log").read_text(errors="replace"))
        raise
    finally:
        server.stop()
    output = (root / "request.log").read_text()
    document, _ = json.JSONDecoder().raw_decode(output[output.index("{") :])  # curl's body, then --stop's lines
    assert document["seeds"] == [42] and len(document["images"]) == 1
    assert document["parameters"]["prompt"] == "A beautiful sunset over mountains"
    assert (document["parameters"]["width"], document["parameters"]["height"]) == (64, 64)  # the model's own size
    log = (root / "logs" / "model_log.log").read_text()
    assert "warmup 64x64 x1, 2 steps: starting" in log and "default size 64x64: the model's own" in log
