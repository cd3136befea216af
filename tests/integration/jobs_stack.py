"""The async job stack for tests: a real Redis, gateways and dispatchers as processes, against a real TorchServe."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from scripts.jobs_control import JobProcess, RedisServer, write_jobs_config
from scripts.torchserve_control import REPO_ROOT


@dataclass
class JobStack:
    folder: Path
    torchserve: object
    settings: dict = field(default_factory=dict)
    redis: RedisServer | None = None
    gateway: JobProcess | None = None
    dispatchers: list[JobProcess] = field(default_factory=list)
    model_yaml: str | None = None  # None: the server's own (server_with_model_yaml's model.yaml), else tiny-sdxl.yaml
    keys: dict = field(default_factory=lambda: {"default": "key-default-0123456789", "other": "key-other-0123456789"})
    env: dict = field(default_factory=dict)

    def start(self, dispatchers: int = 1) -> JobStack:
        if self.model_yaml is None:  # the dispatcher reads the batching mode from it, the gateway the limits
            own = Path(self.torchserve.model_store).parent / "model.yaml"
            self.model_yaml = str(own if own.exists() else REPO_ROOT / "config" / "tiny-sdxl.yaml")
        self.redis = RedisServer(self.folder / "redis")
        self.redis.start()
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "jobs_keys.json").write_text(json.dumps(self.keys))
        settings = {
            "redis_url": self.redis.url,
            "model_yaml": self.model_yaml,
            "torchserve_url": self.torchserve.inference_url,
            "torchserve_key_file": str(self.torchserve.workdir / "key_file.json"),
            "torchserve_management_url": self.torchserve.management_url,
            # the tiny model's folder, built beside the archive (tests/integration/conftest.py)
            "tokenizer_path": str(Path(self.torchserve.model_store).parent / "build" / "tiny-sdxl"),
            **self.settings,
        }
        if yaml.safe_load(Path(self.model_yaml).read_text())["handler"].get("refiner_path"):
            table = self.folder / "step_table.json.gz"  # the refiner's step split, checked at submit
            subprocess.run([sys.executable, "-m", "handler.model.step_table", self.model_yaml,
                            settings["tokenizer_path"], str(table)], check=True, cwd=REPO_ROOT)  # fmt: skip
            settings.setdefault("step_table_path", str(table))
        self.config = write_jobs_config(self.folder, **settings)
        self.gateway = JobProcess("gateway", self.config, self.folder, env=self.env).start()
        for _ in range(dispatchers):
            self.add_dispatcher()
        return self

    def add_dispatcher(self, *extra_args: str) -> JobProcess:
        dispatcher = JobProcess("dispatcher", self.config, self.folder, extra_args=list(extra_args), env=self.env)
        dispatcher.start()
        self.dispatchers.append(dispatcher)
        return dispatcher

    def stop(self) -> None:
        for process in [*self.dispatchers, self.gateway]:
            if process is not None:
                process.stop()
        if self.redis is not None:
            self.redis.stop()

    # -- the API -----------------------------------------------------------------------------------------

    def key(self, name: str = "default") -> str:
        return json.loads((self.folder / "jobs_keys.json").read_text())[name]

    def headers(self, name: str = "default", **more: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key(name)}", **more}

    def submit(
        self, body: dict | bytes | str, *, key: str = "default", headers: dict | None = None, timeout: float = 70
    ) -> requests.Response:
        data = json.dumps(body) if isinstance(body, dict) else body
        all_headers = {"Content-Type": "application/json", **self.headers(key), **(headers or {})}
        return requests.post(f"{self.gateway.url}/generate", data=data, headers=all_headers, timeout=timeout)

    def job(self, job_id: str, key: str = "default") -> dict:
        response = requests.get(f"{self.gateway.url}/jobs/{job_id}", headers=self.headers(key), timeout=10)
        response.raise_for_status()
        return response.json()

    def cancel(self, job_id: str, key: str = "default") -> requests.Response:
        return requests.delete(f"{self.gateway.url}/jobs/{job_id}", headers=self.headers(key), timeout=30)

    def wait(
        self,
        job_id: str,
        timeout: float = 120,
        key: str = "default",
        until=("completed", "failed", "canceled", "expired"),
    ) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id, key)
            if job["status"] in until:
                return job
            time.sleep(0.1)
        raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s:\n{self.logs()}")

    def image(self, job_id: str, key: str = "default", index: int = 0) -> requests.Response:
        return requests.get(
            f"{self.gateway.url}/jobs/{job_id}/image", params={"index": index}, headers=self.headers(key), timeout=30
        )

    def events(self, job_id: str, key: str = "default", headers: dict | None = None) -> list[dict]:
        """Every SSE event of a job until it finishes: [{"id", "event", "data"}]."""
        response = requests.get(
            f"{self.gateway.url}/jobs/{job_id}/events",
            headers={**self.headers(key), **(headers or {})},
            stream=True,
            timeout=120,
        )
        response.raise_for_status()
        return parse_sse(response.iter_lines(decode_unicode=True))

    def redis_client(self):
        import redis

        return redis.Redis(port=self.redis.port)

    def depth(self) -> tuple[int, int]:
        """(queued, active) straight from Redis."""
        client = self.redis_client()
        return client.llen("saq:sdxl:queued"), client.llen("saq:sdxl:active")

    def wait_step(self, job_id: str, step: int, timeout: float = 60) -> dict:
        """The job once it is processing at ``step`` or later."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["status"] == "processing" and job["step"] >= step:
                return job
            assert job["status"] in ("pending", "processing"), job
            time.sleep(0.05)
        raise TimeoutError(f"{job_id} never reached step {step}: {self.job(job_id)}\n{self.logs()}")

    def metrics(self) -> str:
        return requests.get(f"{self.gateway.url}/metrics", timeout=10).text

    def logs(self) -> str:
        return "\n".join(p.log_tail() for p in [self.gateway, *self.dispatchers] if p is not None)


def parse_sse(lines) -> list[dict]:
    events, current = [], {}
    for line in lines:
        if not line:
            if current:
                events.append(current)
                current = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(": ")
        if name == "data":
            current["data"] = json.loads(value)
        elif name in ("id", "event"):
            current[name] = value
    if current:
        events.append(current)
    return events


def requests_answered(server, at_least: float, timeout: float = 60) -> float:
    """TorchServe's answered-request count once it reached ``at_least`` (its metrics lag its replies by up to
    seconds on a loaded machine), or as it is after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (count := torchserve_requests(server)) < at_least and time.monotonic() < deadline:
        time.sleep(0.2)
    return count


def torchserve_requests(server) -> float:
    """Requests the handler has answered (all outcomes), from TorchServe's /metrics."""
    text = requests.get(f"{server.metrics_url}/metrics", timeout=10).text
    return sum(float(m) for m in re.findall(r"^sdxl_requests_total\{[^}]*\} (\S+)$", text, re.M))
