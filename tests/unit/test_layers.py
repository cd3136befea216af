"""The layers' import rules (design: contract/ and the job gateway import no torch; only adapters/ import a
serving framework), checked in fresh interpreters so nothing imported by other tests can hide a violation."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import handler.contract
from tests.conftest import REPO_ROOT

HEAVY = ("torch", "diffusers", "transformers", "ts", "triton_python_backend_utils")


def imported_by(*modules: str) -> set[str]:
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print(' '.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return set(result.stdout.split())


CONTRACT = sorted(f"handler.contract.{m.name}" for m in pkgutil.iter_modules(handler.contract.__path__))


@pytest.mark.parametrize("module", [*CONTRACT, "jobs.gateway", "jobs.dispatcher", "sdxl_client.cli"])
def test_the_contract_the_job_api_and_the_client_import_no_torch(module):
    loaded = imported_by(module)
    assert not {name.split(".")[0] for name in loaded} & set(HEAVY), sorted(loaded & set(HEAVY))


def test_only_the_adapters_import_a_serving_framework():
    for path in sorted((REPO_ROOT / "handler").rglob("*.py")):
        text = path.read_text()
        framework = "from ts." in text or "import ts." in text or "triton_python_backend_utils" in text
        assert not framework or path.parent.name == "adapters", path


# What each layer may import from (design: each depends only on the ones below it).
ALLOWED = {
    "contract": {"contract"},
    "wire": {"contract", "wire"},
    "model": {"contract", "model"},
    "runtime": {"contract", "wire", "model", "runtime"},
    "adapters": {"contract", "wire", "model", "runtime", "adapters"},
}


def test_each_layer_imports_only_from_the_layers_below_it():
    import ast

    crossings = []
    for path in sorted((REPO_ROOT / "handler").rglob("*.py")):
        layer = path.relative_to(REPO_ROOT / "handler").parts[0]
        if layer not in ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("handler."):
                target = node.module.split(".")[1]
                if target not in ALLOWED[layer]:
                    crossings.append(f"{path.relative_to(REPO_ROOT)} imports {node.module}")
    assert set(ALLOWED) == {p.name for p in (REPO_ROOT / "handler").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert not crossings, crossings
