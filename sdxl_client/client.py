"""HTTP client for ``POST /predictions/<model>``: JSON, raw image and streamed responses, with retries."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from handler.wire.events import ERROR, RESULT

from .torchserve_keys import TorchServeKeys, key_rejected

RETRY_STATUSES = {503}  # TorchServe: no worker ready yet, or the queue is full


class APIError(Exception):
    """A non-200 answer (or an ``error`` stream event), with the server's type, field and message."""

    def __init__(self, status: int, message: str, error_type: str = "", field: str | None = None):
        super().__init__(f"HTTP {status} {error_type}: {message}".replace("  ", " "))
        self.status = status
        self.message = message
        self.error_type = error_type
        self.field = field

    @classmethod
    def from_payload(cls, status: int, payload: Any, text: str) -> APIError:
        if isinstance(payload, dict):
            error = payload.get("error", payload)  # ours nest under "error"; TorchServe's are flat
            return cls(
                int(error.get("code", status)),
                str(error.get("message", text)),
                str(error.get("type", "")),
                error.get("field"),
            )
        return cls(status, text.strip()[:500] or "no message")


def key_file_path(key_file: str | os.PathLike | None = None) -> Path:
    """TorchServe's key file: ``key_file``, else $SDXL_KEY_FILE, else ./key_file.json."""
    return Path(key_file or os.environ.get("SDXL_KEY_FILE") or "key_file.json")


def read_token(token: str | None = None, key_file: str | os.PathLike | None = None) -> str | None:
    """The inference token: ``token``, else $SDXL_TOKEN, else the "inference" key of TorchServe's key file
    (see :func:`key_file_path`). None when there is none (token auth off)."""
    if token:
        return token
    if os.environ.get("SDXL_TOKEN"):
        return os.environ["SDXL_TOKEN"]
    return TorchServeKeys(key_file_path(key_file)).key()  # renewed first if it is about to expire


class SDXLClient:
    """Client of one sdxl-torchserve endpoint.

    Args:
        url (`str`, defaults to "http://127.0.0.1:8080"): TorchServe's inference address.
        model (`str`, defaults to "stable-diffusion-xl"): the model name.
        token (`str`, defaults to None): a fixed inference key (or $SDXL_TOKEN); it cannot be renewed. None reads
            TorchServe's key file (``key_file``) before every request and renews an expired or rejected key.
        key_file (`str`, defaults to None): TorchServe's key_file.json (see :func:`key_file_path`).
        management_url (`str`, defaults to "http://127.0.0.1:8081"): where that key file's keys are renewed.
        timeout (`float`, defaults to 600): seconds to wait for an answer (per streamed line when streaming).
        retries (`int`, defaults to 4): extra tries on 503 and refused connections.
        backoff (`float`, defaults to 0.5): first wait between tries in seconds; doubles each time.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        model: str = "stable-diffusion-xl",
        token: str | None = None,
        key_file: str | None = None,
        management_url: str = "http://127.0.0.1:8081",
        timeout: float = 600,
        retries: int = 4,
        backoff: float = 0.5,
    ):
        self.endpoint = f"{url.rstrip('/')}/predictions/{model}"
        self.token = token or os.environ.get("SDXL_TOKEN") or None
        self.keys = None if self.token else TorchServeKeys(key_file_path(key_file), management_url)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.session = requests.Session()

    def generate(self, body: dict[str, Any]) -> dict[str, Any]:
        """The JSON response (base64 images, seeds, parameters, timings)."""
        return self._post(body, accept="application/json").json()

    def generate_image(self, body: dict[str, Any], output_format: str = "png") -> tuple[bytes, dict[str, str]]:
        """The encoded image itself and the response headers (``X-Seed``, ``X-Parameters``, ...)."""
        response = self._post(body, accept=f"image/{output_format}")
        return response.content, dict(response.headers)

    def stream(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Events as they come: ``progress``, ``preview``, then ``result``. An ``error`` event raises APIError."""
        response = self._post({**body, "stream": True}, accept="application/x-ndjson", stream=True)
        with response:
            for line in response.iter_lines():
                if not line:
                    continue
                event = json.loads(line)
                if "event" not in event:  # a server answering in one piece (e.g. stream not supported)
                    event = {"event": RESULT, **event}
                if event["event"] == ERROR:
                    raise APIError.from_payload(200, event, line.decode(errors="replace"))
                yield event

    def _send(self, data: str, accept: str, stream: bool) -> requests.Response:
        """One POST with a valid key: a key TorchServe rejects (expired) is renewed and the POST sent once more."""

        def send(auth: dict[str, str]) -> requests.Response:
            headers = {"Content-Type": "application/json", "Accept": accept, **auth}
            return self.session.post(self.endpoint, data=data, headers=headers, timeout=self.timeout, stream=stream)

        if self.keys is None:
            return send({"Authorization": f"Bearer {self.token}"})
        # A 200 stream is not read here: only a 400's (small) body is looked at.
        return self.keys.call(send, lambda r: r.status_code == 400 and key_rejected(400, r.content))

    def _post(self, body: dict[str, Any], accept: str, stream: bool = False) -> requests.Response:
        data = json.dumps(body)
        wait = self.backoff
        for attempt in range(self.retries + 1):
            try:
                response = self._send(data, accept, stream)
            except requests.ConnectionError:
                if attempt == self.retries:
                    raise
            else:
                if response.status_code == 200:
                    if not stream and response.headers.get("X-Deferred-Status") == "true":
                        self._raise_deferred_error(response)
                    return response
                if response.status_code not in RETRY_STATUSES or attempt == self.retries:
                    try:
                        payload = response.json()
                    except ValueError:
                        payload = None
                    raise APIError.from_payload(response.status_code, payload, response.text)
                response.close()
            time.sleep(wait)
            wait *= 2
        raise AssertionError("unreachable")

    @staticmethod
    def _raise_deferred_error(response: requests.Response) -> None:
        """Continuous batching sends 200 when a request joins; a later failure is the error document in the
        body (even where an image was asked for)."""
        if response.content.startswith(b'{"error"'):
            payload = response.json()
            raise APIError.from_payload(int(payload["error"].get("code", 500)), payload, response.text)
