"""Start, wait for, query and stop a local TorchServe: shared by scripts/server.py and the integration tests.

TorchServe facts this relies on (see docs/configuration.md): ``torchserve --start`` returns at once and
its java child inherits stdout, so output goes to a log file, never a pipe; the pid file and unpacked
models live under $TEMP, so each server gets its own TEMP; token keys are written to key_file.json in the
directory the server starts in.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests

from sdxl_client.torchserve_keys import TorchServeKeys, key_rejected

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = REPO_ROOT / "config.properties"
MODEL_NAME = "stable-diffusion-xl"


def tool(name: str) -> str:
    """A console script of this interpreter's environment (found even when the venv is not activated)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name) or name


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(url: str) -> bool:
    """Whether something accepts connections at ``url``'s host and port."""
    address = urlsplit(url)
    try:
        with socket.create_connection((address.hostname, address.port), timeout=1):
            return True
    except OSError:
        return False


def loopback_addresses() -> dict[str, str]:
    """config.properties keys putting every TorchServe listener on a free 127.0.0.1 port (gRPC included:
    7070/7071 by default, so servers side by side need their own)."""
    return {
        "inference_address": f"http://127.0.0.1:{free_port()}",
        "management_address": f"http://127.0.0.1:{free_port()}",
        "metrics_address": f"http://127.0.0.1:{free_port()}",
        "grpc_inference_port": str(free_port()),
        "grpc_management_port": str(free_port()),
    }


def read_properties(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def write_config(target: Path, overrides: dict[str, str], base: Path = SHIPPED_CONFIG) -> Path:
    """The shipped config.properties with ``overrides`` applied (comments kept, new keys appended)."""
    lines, seen = [], set()
    for line in base.read_text().splitlines():
        match = re.match(r"\s*([A-Za-z_.]+)\s*=", line)
        if match and match.group(1) in overrides:
            key = match.group(1)
            line = f"{key}={overrides[key]}"
            seen.add(key)
        lines.append(line)
    lines += [f"{key}={value}" for key, value in overrides.items() if key not in seen]
    # A config written elsewhere still finds the repository's metrics config.
    lines = [
        f"metrics_config={REPO_ROOT / line.split('=', 1)[1]}"
        if line.startswith("metrics_config=") and not Path(line.split("=", 1)[1]).is_absolute()
        else line
        for line in lines
    ]
    target.write_text("\n".join(lines) + "\n")
    return target


@dataclass
class TorchServe:
    """One TorchServe server with its own working directory, TEMP dir and config.

    Args:
        workdir (`Path`): where it starts (key_file.json, logs/ and temp/ land here).
        config (`Path`): the config.properties to use.
        model_store (`Path`): folder with the archives.
        extra_args (`list[str]`): more ``torchserve --start`` flags (e.g. ``--disable-token-auth``).
    """

    workdir: Path
    config: Path
    model_store: Path
    extra_args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        props = read_properties(Path(self.config))
        self.inference_url = props.get("inference_address", "http://127.0.0.1:8080")
        self.management_url = props.get("management_address", "http://127.0.0.1:8081")
        self.metrics_url = props.get("metrics_address", "http://127.0.0.1:8082")
        self.log_file = self.workdir / "logs" / "torchserve.out"
        self.token_keys = TorchServeKeys(self.workdir / "key_file.json", self.management_url)

    @property
    def env(self) -> dict[str, str]:
        temp = self.workdir / "temp"
        temp.mkdir(parents=True, exist_ok=True)
        return {**os.environ, "TEMP": str(temp), "TMPDIR": str(temp)}

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        command = [
            tool("torchserve"),
            "--start",
            "--ncs",
            "--ts-config",
            str(Path(self.config).resolve()),
            "--model-store",
            str(Path(self.model_store).resolve()),
            *self.extra_args,
        ]
        with open(self.log_file, "ab") as log:
            subprocess.run(command, cwd=self.workdir, env=self.env, stdout=log, stderr=log, check=True)

    def stop(self, timeout: float = 60) -> None:
        with open(self.log_file, "ab") as log:
            subprocess.run(
                [tool("torchserve"), "--stop"],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=log,
                check=False,
                timeout=timeout,
            )
        pid_file = self.workdir / "temp" / ".model_server.pid"
        deadline = time.monotonic() + timeout
        # Stopped means the ports are free: the frontend outlives its pid file by seconds.
        urls = (self.inference_url, self.management_url, self.metrics_url)
        while (pid_file.exists() or any(listening(url) for url in urls)) and time.monotonic() < deadline:
            time.sleep(0.2)

    # -- keys and requests ------------------------------------------------------------------------

    def keys(self) -> dict[str, str]:
        """Token keys by API ("inference", "management"); empty when token auth is off."""
        data = self.token_keys.entries() or {}
        return {name: entry["key"] for name, entry in data.items() if isinstance(entry, dict) and "key" in entry}

    def headers(self, api: str = "inference") -> dict[str, str]:
        """The Authorization header with a key that is not about to expire (renewed first when it is)."""
        return self.token_keys.headers(api)

    def predict(
        self,
        body: dict | bytes | str,
        *,
        model: str = MODEL_NAME,
        timeout: float = 300,
        headers: dict[str, str] | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """POST /predictions with a valid inference key (renewed when TorchServe rejects it; ``headers`` may
        bring a key of their own, which is sent as it is)."""
        url = f"{self.inference_url}/predictions/{model}"
        data = json.dumps(body) if isinstance(body, dict) else body

        def send(auth: dict[str, str]) -> requests.Response:
            all_headers = {"Content-Type": "application/json", **auth, **(headers or {})}
            return requests.post(url, data=data, headers=all_headers, timeout=timeout, stream=stream)

        if "Authorization" in (headers or {}):
            return send({})
        return self.token_keys.call(send, _rejected)

    def describe(self, model: str = MODEL_NAME) -> list[dict]:
        response = self.token_keys.call(
            lambda auth: requests.get(f"{self.management_url}/models/{model}", headers=auth, timeout=10),
            _rejected,
            "management",
        )
        response.raise_for_status()
        return response.json()

    def worker_pids(self, model: str = MODEL_NAME) -> list[int]:
        return [worker["pid"] for worker in self.describe(model)[0]["workers"] if worker.get("status") == "READY"]

    def wait_ready(self, model: str = MODEL_NAME, timeout: float = 300) -> None:
        """Block until ``model`` has a READY worker; raise with the log's tail if it never comes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.worker_pids(model):
                    return
            except (requests.RequestException, KeyError, IndexError, ValueError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{model} not READY after {timeout:.0f} s; log tail:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        texts = []
        for path in [self.log_file, *sorted((self.workdir / "logs").glob("*.log"))]:
            if path.exists():
                texts.append(f"== {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(texts)


def _rejected(response: requests.Response) -> bool:
    return response.status_code == 400 and key_rejected(400, response.content)
