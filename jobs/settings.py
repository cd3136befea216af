"""The job API's settings: one dataclass, read from a yaml file (``config/jobs.yaml``) and ``SDXL_JOBS_*``
environment variables (for Kubernetes), checked up front."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from handler.contract.errors import ConfigError

RESULT_STORES = ("filesystem", "s3")


@dataclass(frozen=True)
class JobSettings:
    """Every setting, with its default. docs/jobs.md documents each.

    Args:
        redis_url (`str`, defaults to ``redis://127.0.0.1:6379/0``): the queue and all job state.
        queue_name (`str`, defaults to ``sdxl``): SAQ queue name; its Redis lists are ``saq:<name>:queued`` and
            ``saq:<name>:active`` (the KEDA triggers read both).
        model_yaml (`str`, defaults to ``config/tiny-sdxl.yaml``): the served model's yaml (the one in its
            archive); the gateway checks submitted bodies against its limits and defaults, exactly as the handler
            will, and the dispatcher reads its batching mode (``continuousBatching``) to know what a cancel saves.
        tokenizer_path (`str`, defaults to none): the served model's diffusers folder (or one holding its
            ``tokenizer/`` and ``tokenizer_2/``): prompts are counted in tokens at submit, as TorchServe will; unset,
            a prompt too long for the text encoders is accepted here and fails as a job.
        step_table_path (`str`, defaults to none): for a model with a refiner, its stage schedules as written by
            ``python -m handler.model.step_table`` (the gateway imports no torch): a ``denoising_end`` that leaves
            the base or the refiner no step is refused at submit, as TorchServe will; unset, it fails as a job.
        api_keys_file (`str`, defaults to ``jobs_keys.json``): ``{"name": "key", ...}``; created with one random
            key when missing (as TorchServe's key_file.json). A job belongs to the key name that made it.
        auth (`bool`, defaults to true): false turns keys off (local work only; every job is then one owner's).
        result_store (`str`, defaults to ``filesystem``): ``filesystem`` or ``s3``.
        results_dir (`str`, defaults to ``job_results``): the filesystem store's folder.
        s3_bucket, s3_prefix, s3_endpoint_url, s3_region (`str`): the S3 store; credentials from boto3's chain.
        s3_redirect (`bool`, defaults to true): GET /jobs/{id}/image answers 307 to a presigned URL instead of
            relaying the bytes.
        result_ttl_s (`int`, defaults to 3600): how long a finished job's image and events are kept.
        expired_record_ttl_s (`int`, defaults to 86400): how long after that a job still answers ``expired``.
        max_queued (`int`, defaults to 10000): pending jobs overall before submits get 429.
        max_open_per_key (`int`, defaults to 100): unfinished jobs per key before its submits get 429.
        max_body_bytes (`int`, defaults to 33554432): the largest submit body (as TorchServe's max_request_size).
        max_wait_s (`int`, defaults to 60): the largest ``Prefer: wait=N``.
        idempotency_ttl_s (`int`, defaults to 86400): how long an ``Idempotency-Key`` is remembered.
        webhook_allowed_hosts (`list[str]`, defaults to none): the only hosts webhooks may target; empty refuses
            every webhook (no server-side request forgery by default).
        webhook_allow_http (`bool`, defaults to false): allow ``http://`` webhook URLs (https only otherwise).
        webhook_secret (`str`, defaults to none): HMAC key for webhook signatures; required when webhooks are on.
        webhook_attempts (`int`, defaults to 5): deliveries tried before a webhook is given up.
        webhook_retry_delay_s (`float`, defaults to 1.0): first retry delay, doubled each attempt.
        webhook_timeout_s (`float`, defaults to 10.0): per delivery.
        public_url (`str`, defaults to none): the gateway's external base URL, for the absolute image URLs in
            webhook payloads (API answers use the URL the client called).
        torchserve_url (`str`, defaults to ``http://127.0.0.1:8080``): the dispatcher's TorchServe.
        model_name (`str`, defaults to ``stable-diffusion-xl``).
        torchserve_key_file (`str`, defaults to ``key_file.json``): TorchServe's token file (inference key).
        torchserve_management_url (`str`, defaults to ``http://127.0.0.1:8081``): the dispatcher's TorchServe's
            management API (loopback: the same pod), where an expired inference key is renewed with the API key.
        concurrency (`int`, defaults to 0): jobs a dispatcher runs at once; 0 = batchSize x maxWorkers of
            ``model_yaml``, so TorchServe's batches still fill.
        attempts (`int`, defaults to 3): deliveries of a job to a dispatcher (worker deaths included).
        heartbeat_s (`int`, defaults to 10): a running job whose dispatcher stayed silent this long is swept
            and put back at the head of the queue.
        sweep_s (`int`, defaults to 5): how often dispatchers look for such jobs.
        job_timeout_s (`int`, defaults to 900): the longest a job may run.
        drain_grace_s (`int`, defaults to 25): on SIGTERM, how long running jobs may finish before the rest go
            back to the head of the queue (keep it below the pod's terminationGracePeriodSeconds).
    """

    redis_url: str = "redis://127.0.0.1:6379/0"
    queue_name: str = "sdxl"
    model_yaml: str = "config/tiny-sdxl.yaml"
    tokenizer_path: str | None = None
    step_table_path: str | None = None
    api_keys_file: str = "jobs_keys.json"
    auth: bool = True
    result_store: str = "filesystem"
    results_dir: str = "job_results"
    s3_bucket: str | None = None
    s3_prefix: str = "jobs/"
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_redirect: bool = True
    result_ttl_s: int = 3600
    expired_record_ttl_s: int = 86400
    max_queued: int = 10000
    max_open_per_key: int = 100
    max_body_bytes: int = 32 * 1024 * 1024
    max_wait_s: int = 60
    idempotency_ttl_s: int = 86400
    webhook_allowed_hosts: tuple[str, ...] = field(default_factory=tuple)
    webhook_allow_http: bool = False
    webhook_secret: str | None = None
    webhook_attempts: int = 5
    webhook_retry_delay_s: float = 1.0
    webhook_timeout_s: float = 10.0
    public_url: str | None = None
    torchserve_url: str = "http://127.0.0.1:8080"
    model_name: str = "stable-diffusion-xl"
    torchserve_key_file: str = "key_file.json"
    torchserve_management_url: str = "http://127.0.0.1:8081"
    concurrency: int = 0
    attempts: int = 3
    heartbeat_s: int = 10
    sweep_s: int = 5
    job_timeout_s: int = 900
    drain_grace_s: int = 25

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, environ: dict[str, str] | None = None) -> JobSettings:
        """Read ``path`` (or ``$SDXL_JOBS_CONFIG``; none = defaults), then ``SDXL_JOBS_<FIELD>`` overrides."""
        environ = os.environ if environ is None else environ
        path = path or environ.get("SDXL_JOBS_CONFIG")
        values: dict[str, Any] = {}
        if path:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
            if not isinstance(loaded, dict):
                raise ConfigError(f"{path} must be a mapping of job settings")
            values.update(loaded)
        by_name = {f.name: f for f in fields(cls)}
        for name, spec in by_name.items():
            text = environ.get(f"SDXL_JOBS_{name.upper()}")
            if text is not None:
                values[name] = _from_env(text, spec.type)
        unknown = sorted(set(values) - set(by_name))
        if unknown:
            raise ConfigError(f"unknown job setting(s) {', '.join(unknown)}; known: {', '.join(by_name)}")
        if "webhook_allowed_hosts" in values:
            hosts = values["webhook_allowed_hosts"] or []
            if not isinstance(hosts, (list, tuple)) or not all(isinstance(h, str) for h in hosts):
                raise ConfigError(f"webhook_allowed_hosts must be a list of host names but is {hosts!r}")
            values["webhook_allowed_hosts"] = tuple(h.lower() for h in hosts)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if self.result_store not in RESULT_STORES:
            raise ConfigError(f"result_store must be one of {', '.join(RESULT_STORES)} but is {self.result_store!r}")
        if self.result_store == "s3" and not self.s3_bucket:
            raise ConfigError("result_store s3 needs s3_bucket")
        if self.webhook_allowed_hosts and not self.webhook_secret:
            raise ConfigError("webhook_allowed_hosts is set but webhook_secret is not: webhooks must be signed")
        for name in ("result_ttl_s", "max_queued", "max_open_per_key", "max_body_bytes", "attempts", "heartbeat_s"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer but is {getattr(self, name)!r}")
        if not 1 <= self.max_wait_s <= 600:
            raise ConfigError(f"max_wait_s must be in 1..600 but is {self.max_wait_s!r}")

    def with_changes(self, **changes: Any) -> JobSettings:
        changed = replace(self, **changes)
        changed.check()
        return changed


def _from_env(text: str, kind: Any) -> Any:
    kind = str(kind)
    if "bool" in kind:
        return text.strip().lower() in ("1", "true", "yes", "on")
    if "tuple" in kind:
        return [part.strip() for part in text.split(",") if part.strip()]
    if kind.startswith("int"):
        return int(text)
    if kind.startswith("float"):
        return float(text)
    return text


def load_api_keys(settings: JobSettings) -> dict[str, str]:
    """key -> owner name. A missing file is created with one random key (mode 0600), as TorchServe does."""
    import secrets

    if not settings.auth:
        return {}
    path = Path(settings.api_keys_file)
    if not path.exists():
        path.write_text(json.dumps({"default": secrets.token_urlsafe(24)}, indent=2) + "\n")
        path.chmod(0o600)
    keys = json.loads(path.read_text())
    if not isinstance(keys, dict) or not keys or not all(isinstance(v, str) and len(v) >= 16 for v in keys.values()):
        raise ConfigError(f"{path} must map key names to keys of 16+ characters")
    return {key: name for name, key in keys.items()}
