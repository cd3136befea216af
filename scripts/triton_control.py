"""Start and stop a real Triton Inference Server (CPU, from the nvidia-pytriton wheel) on 127.0.0.1.

The wheel bundles tritonserver and the Python backend; :func:`backend_directory` assembles the backend folder
Triton wants (the backend library, its utils, and the stub built for the running Python), and
:class:`TritonServer` runs it with the library path and PATH the stub needs (see ../shared/triton-facts.md:
the stub links the running interpreter's libpython, and finds the venv, hence numpy and our package, through
PATH). Every listener is on a free loopback port; logs go to ``<workdir>/triton.log``.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import requests

from scripts.torchserve_control import free_port


def wheel_root() -> Path:
    """``pytriton/tritonserver`` inside the installed nvidia-pytriton wheel."""
    import pytriton

    return Path(pytriton.__file__).parent / "tritonserver"


def backend_directory(target: Path) -> Path:
    """``target/python`` with the Python backend and the stub for this interpreter; returns ``target``."""
    root = wheel_root()
    python = target / "python"
    python.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(root / "backends" / "python" / name, python / name)
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    shutil.copy2(root / "python_backend_stubs" / version / "triton_python_backend_stub", python)
    return target


def server_environment() -> dict[str, str]:
    """The interpreter's libpython first (trap 1), the wheel's libraries, and this venv's bin on PATH (trap 2)."""
    purelib = Path(sysconfig.get_paths()["purelib"])
    libraries = [sysconfig.get_config_var("LIBDIR"), str(purelib / "nvidia_pytriton.libs")]
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join([*libraries, env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


class TritonServer:
    """One tritonserver process.

    Args:
        repository (`Path`): the model repository (scripts/triton_repository.py writes one).
        workdir (`Path`): backends, logs.
        config_name (`str`, defaults to "cpu"): ``--model-config-name`` (cpu: KIND_CPU; "" for config.pbtxt).
    """

    def __init__(self, repository: Path, workdir: Path, config_name: str = "cpu"):
        self.repository = Path(repository)
        self.workdir = Path(workdir)
        self.config_name = config_name
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.url = f"127.0.0.1:{self.http_port}"
        self.process: subprocess.Popen | None = None
        self.log = self.workdir / "triton.log"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        backends = backend_directory(self.workdir / "backends")
        root = wheel_root()
        command = [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--cache-directory={root / 'caches'}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--exit-timeout-secs=10",
        ]
        if self.config_name:
            command.append(f"--model-config-name={self.config_name}")
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=server_environment(), start_new_session=True
            )

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited ({self.process.returncode}):\n{self.tail()}")
            try:
                if requests.get(f"http://{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"tritonserver not ready after {timeout} s:\n{self.tail()}")

    def healthy(self) -> bool:
        try:
            return requests.get(f"http://{self.url}/v2/health/ready", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    def stop(self) -> None:
        """SIGTERM (finalize runs), then SIGKILL the group if it hangs; remove shared-memory leftovers."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        for leftover in glob.glob(f"/dev/shm/triton_python_backend_shm_region_*{self.process.pid}*"):
            Path(leftover).unlink(missing_ok=True)
        self.process = None
