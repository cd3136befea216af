"""Start, wait for and stop the async job stack's processes: Redis (Debian's redis-server, AOF on), the gateway
(uvicorn) and dispatchers. Shared by scripts/jobs_server.py, the integration tests and the benchmark.

Each process gets its own folder, listens on 127.0.0.1 on a free port and is stopped by whoever started it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from scripts.torchserve_control import REPO_ROOT, free_port


def redis_conf(port: int, folder: Path) -> str:
    """The settings the job API relies on (docs/jobs.md): AOF with fsync on every write, so an accepted
    job survives a crash or restart of Redis; no eviction (jobs are data, not cache)."""
    return (
        "\n".join(
            [
                "bind 127.0.0.1",
                f"port {port}",
                f"dir {folder}",
                "appendonly yes",
                "appendfsync always",
                "save ''",
                "maxmemory-policy noeviction",
                "protected-mode yes",
                "daemonize no",
                f"logfile {folder / 'redis.log'}",
            ]
        )
        + "\n"
    )


@dataclass
class RedisServer:
    folder: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: bash scripts/install.sh installs it (apt-get redis-server)")
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "redis.conf"
        conf.write_text(redis_conf(self.port, self.folder))
        # Its own session and no inherited stdout: it outlives a `scripts/jobs_server.py start` and never holds
        # the caller's pipe open.
        self.process = subprocess.Popen(
            [binary, str(conf)],
            cwd=self.folder,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start; log:\n{self.log_tail()}")

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown save; only what the AOF holds survives."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 30) -> str:
        log = self.folder / "redis.log"
        return "\n".join(log.read_text().splitlines()[-lines:]) if log.exists() else ""


def write_jobs_config(folder: Path, **settings) -> Path:
    """A jobs yaml in ``folder`` (results and keys inside it) with ``settings`` on top."""
    folder.mkdir(parents=True, exist_ok=True)
    values = {"results_dir": str(folder / "results"), "api_keys_file": str(folder / "jobs_keys.json"), **settings}
    path = folder / "jobs.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@dataclass
class JobProcess:
    """A gateway (``kind="gateway"``) or a dispatcher (``kind="dispatcher"``) in its own process: this
    checkout's code under this interpreter, or with ``python`` another environment's installed package."""

    kind: str
    config: Path
    folder: Path
    port: int = field(default_factory=free_port)
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    python: str | None = None
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> JobProcess:
        self.folder.mkdir(parents=True, exist_ok=True)
        module = "jobs.gateway" if self.kind == "gateway" else "jobs.dispatcher"
        command = [self.python or sys.executable, "-m", module, "--config", str(self.config), *self.extra_args]
        if self.kind == "gateway":
            command += ["--port", str(self.port)]
        source = {} if self.python else {"PYTHONPATH": str(REPO_ROOT)}
        env = {**os.environ, **source, "PYTHONUNBUFFERED": "1", **self.env}
        self.log = self.folder / f"{self.kind}-{self.port}.log"
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.folder if self.python else REPO_ROOT,
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        if self.kind == "gateway":
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited {self.process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"gateway not healthy after {timeout} s:\n{self.log_tail()}")

    def signal(self, signum: int) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signum)

    def stop(self, timeout: float = 40) -> int | None:
        if self.process is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""
