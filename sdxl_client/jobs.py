"""HTTP client of the async job API (jobs/gateway.py): submit, status, events, wait, cancel, fetch."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from .client import APIError

TERMINAL = ("completed", "failed", "canceled", "expired")


def read_api_key(key: str | None = None, keys_file: str | os.PathLike | None = None) -> str | None:
    """``key``, else $SDXL_JOBS_KEY, else the first key of the gateway's jobs_keys.json (``keys_file``,
    $SDXL_JOBS_KEYS_FILE or ./jobs_keys.json). None when there is none (auth off)."""
    if key:
        return key
    if os.environ.get("SDXL_JOBS_KEY"):
        return os.environ["SDXL_JOBS_KEY"]
    path = Path(keys_file or os.environ.get("SDXL_JOBS_KEYS_FILE") or "jobs_keys.json")
    if path.exists():
        return next(iter(json.loads(path.read_text()).values()))
    return None


class JobsClient:
    """Client of one job API gateway.

    Args:
        url (`str`, defaults to "http://127.0.0.1:8090"): the gateway.
        key (`str`, defaults to None): API key; None reads it as :func:`read_api_key` does.
        keys_file (`str`, defaults to None): the gateway's jobs_keys.json.
        timeout (`float`, defaults to 60): seconds per HTTP call (per event line when following events).
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8090",
        key: str | None = None,
        keys_file: str | None = None,
        timeout: float = 60,
    ):
        self.url = url.rstrip("/")
        self.key = read_api_key(key, keys_file)
        self.timeout = timeout

    def _headers(self, **more: str) -> dict[str, str]:
        return {**({"Authorization": f"Bearer {self.key}"} if self.key else {}), **more}

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        response = requests.request(method, self.url + path, timeout=kwargs.pop("timeout", self.timeout), **kwargs)
        if response.status_code >= 400:
            try:
                payload = response.json()
            except ValueError:
                payload = None
            raise APIError.from_payload(response.status_code, payload, response.text)
        return response

    def submit(
        self,
        body: dict[str, Any],
        *,
        webhook: str | None = None,
        metadata: dict | None = None,
        idempotency_key: str | None = None,
        wait_s: float | None = None,
    ) -> dict[str, Any]:
        """POST /generate. An idempotency key is made up when none is given, so a retried submit (after a
        timeout, say) never makes a second job."""
        document = {**body, **({"webhook": webhook} if webhook else {}), **({"metadata": metadata} if metadata else {})}
        headers = self._headers(
            **{"Content-Type": "application/json", "Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        )
        if wait_s:
            headers["Prefer"] = f"wait={wait_s:g}"
        for attempt in range(3):
            try:
                return self._call(
                    "POST",
                    "/generate",
                    data=json.dumps(document),
                    headers=headers,
                    timeout=self.timeout + (wait_s or 0),
                ).json()
            except requests.ConnectionError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def status(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/jobs/{job_id}", headers=self._headers()).json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/jobs/{job_id}", headers=self._headers()).json()

    def fetch(self, job_id: str, index: int = 0) -> bytes:
        """The image bytes (following a redirect to the object store, without sending the key there)."""
        response = self._call(
            "GET", f"/jobs/{job_id}/image", params={"index": index}, headers=self._headers(), allow_redirects=False
        )
        if response.status_code in (301, 302, 303, 307, 308):
            response = requests.get(response.headers["Location"], timeout=self.timeout)
            response.raise_for_status()
        return response.content

    def events(self, job_id: str, after: str | None = None) -> Iterator[dict[str, Any]]:
        """Server-Sent Events ``{"id", "event", "data"}`` until the job finishes; resumes after a dropped
        connection from the last id seen."""
        last = after
        for _attempt in range(5):
            headers = self._headers(**({"Last-Event-ID": last} if last else {}))
            try:
                response = self._call("GET", f"/jobs/{job_id}/events", headers=headers, stream=True)
                event: dict[str, Any] = {}
                for line in response.iter_lines(decode_unicode=True):
                    if not line:
                        if event:
                            last = event.get("id", last)
                            yield event
                            if event.get("event") == "status" and event["data"].get("status") in TERMINAL:
                                return
                        event = {}
                    elif not line.startswith(":"):
                        name, _, value = line.partition(": ")
                        event[name] = json.loads(value) if name == "data" else value
                return
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
                continue

    def wait(self, job_id: str, on_event=None) -> dict[str, Any]:
        """Follow the events until the job finishes; returns the finished job."""
        for event in self.events(job_id):
            if on_event is not None:
                on_event(event)
        return self.status(job_id)
