"""TorchServe's token keys, kept valid for as long as the server runs.

TorchServe (token authorization on, as it ships) writes three keys to ``key_file.json`` in the folder it starts
in: ``inference`` and ``management`` expire after ``token_expiration_min`` (60 by default), the ``API`` key never
does. ``GET <management>/token?type=inference`` with the API key makes a new inference key and rewrites the file
(the old key stops working at once, for everyone). Everything of ours that talks to TorchServe (dispatcher,
healthcheck, drain, client, scripts) goes through :class:`TorchServeKeys`:

1. read the key from the file each time (a restarted TorchServe writes new keys);
2. renew it before it expires (``renew_within_s``), and
3. when TorchServe still rejects it (400 ``InvalidKeyException``), renew and send the request once more.

Renewals are serialised by an exclusive ``flock`` on the key file and are compare-and-renew: a caller whose key
was rejected renews only if the file still holds that key, so components sharing one TorchServe never renew in
a loop against each other. The management API is loopback-only in every shipped config: renewal works where
TorchServe's key file is (the same machine, or the same pod through a shared volume). Standard library only: it
runs in the container next to TorchServe, in the healthcheck.

CLI (sdxl_client.keytool): ``python -m sdxl_client.keytool ping`` (the healthcheck; exit 0 when /ping says
Healthy) and ``python -m sdxl_client.keytool key`` (print a valid inference key, for curl).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

KEY_REJECTED = "InvalidKeyException"  # TorchServe's error type for a missing, wrong or expired key (HTTP 400)
APIS = ("inference", "management")
Response = TypeVar("Response")


def key_rejected(status: int, body: bytes | str | None) -> bool:
    """True for TorchServe's answer to a missing, wrong or expired key: 400 with type InvalidKeyException."""
    if status != 400 or not body:
        return False
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    return KEY_REJECTED in text[:500]


class KeyRenewalFailed(Exception):
    """The management API would not renew the key (unreachable, or the API key is not accepted)."""


class TorchServeKeys:
    """The keys of one TorchServe, renewed through its management API.

    Args:
        key_file (`str | Path`, defaults to "key_file.json"): TorchServe's key file (relative to the working dir).
        management_url (`str`, defaults to "http://127.0.0.1:8081"): where ``/token`` is served.
        renew_within_s (`float`, defaults to 30): renew a key before use when it expires within this many seconds.
        timeout_s (`float`, defaults to 10): seconds for one call to the management API.
    """

    def __init__(
        self,
        key_file: str | os.PathLike = "key_file.json",
        management_url: str = "http://127.0.0.1:8081",
        renew_within_s: float = 30.0,
        timeout_s: float = 10.0,
    ):
        self.key_file = Path(key_file)
        self.management_url = management_url.rstrip("/")
        self.renew_within_s = renew_within_s
        self.timeout_s = timeout_s
        self.renewals = 0  # renewals this object made (tests and logs)

    # -- reading ----------------------------------------------------------------------------------------

    def entries(self) -> dict | None:
        """The key file's JSON, or None when there is no file (token authorization off)."""
        for _ in range(50):  # TorchServe truncates, then writes: a read can land in between
            try:
                return json.loads(self.key_file.read_text())
            except FileNotFoundError:
                return None
            except ValueError:
                time.sleep(0.02)
        raise ValueError(f"{self.key_file} is not valid JSON")

    def key(self, api: str = "inference") -> str | None:
        """A key for ``api`` ("inference" or "management") that is not about to expire; None when token
        authorization is off. Renews first when the key expires within ``renew_within_s``."""
        entries = self.entries()
        if entries is None:
            return None
        entry = entries.get(api, {})
        expires = _expiry(entry.get("expiration time"))
        if expires is not None and expires - time.time() < self._margin(expires):
            with contextlib.suppress(KeyRenewalFailed):  # still usable, or the retry after a rejection tells
                return self.renew(api, rejected=entry.get("key"))
        return entry.get("key")

    def _margin(self, expires: float) -> float:
        """How long before expiry a key is renewed: ``renew_within_s``, or a quarter of the key's lifetime when
        that is shorter (the file was written when the key was made), so short-lived keys are not renewed at
        every use."""
        with contextlib.suppress(OSError):
            return min(self.renew_within_s, max(expires - self.key_file.stat().st_mtime, 0.0) / 4)
        return self.renew_within_s

    def headers(self, api: str = "inference") -> dict[str, str]:
        key = self.key(api)
        return {"Authorization": f"Bearer {key}"} if key else {}

    # -- renewing ---------------------------------------------------------------------------------------

    def renew(self, api: str = "inference", rejected: str | None = None) -> str | None:
        """A fresh key for ``api``. Under the file's lock: if the file no longer holds ``rejected`` (the key the
        caller was refused with, or found about to expire) another process renewed it already, and its key is
        returned; otherwise TorchServe makes a new one.

        Raises:
            KeyRenewalFailed: the management API is unreachable or refuses the API key.
        """
        if api not in APIS:
            raise ValueError(f"`api` must be one of {APIS} but is {api!r}")
        try:
            handle = open(self.key_file)  # noqa: SIM115 - held for the lock's lifetime
        except FileNotFoundError:
            return None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            entries = self.entries() or {}
            current = entries.get(api, {}).get("key")
            if current is not None and current != rejected:
                return current  # renewed (or restarted) since the caller read it
            api_key = entries.get("API", {}).get("key")
            request = urllib.request.Request(
                f"{self.management_url}/token?type={api}", headers={"Authorization": f"Bearer {api_key}"}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    response.read()
            except urllib.error.HTTPError as exc:
                raise KeyRenewalFailed(f"TorchServe refused to renew the {api} key: HTTP {exc.code}") from None
            except (OSError, ValueError) as exc:
                raise KeyRenewalFailed(f"TorchServe's management API at {self.management_url}: {exc}") from None
            self.renewals += 1
            return (self.entries() or {}).get(api, {}).get("key")

    def call(
        self,
        send: Callable[[dict[str, str]], Response],
        rejected: Callable[[Response], bool],
        api: str = "inference",
    ) -> Response:
        """``send(headers)`` with a valid key; when TorchServe rejects the key, renew it and send once more."""
        key = self.key(api)
        response = send({"Authorization": f"Bearer {key}"} if key else {})
        if key is None or not rejected(response):
            return response
        try:
            fresh = self.renew(api, rejected=key)
        except KeyRenewalFailed:
            return response  # the caller sees TorchServe's own rejection
        return send({"Authorization": f"Bearer {fresh}"} if fresh else {})


def _expiry(text: str | None) -> float | None:
    """Seconds since the epoch of TorchServe's ``expiration time`` (Java's Instant: up to 9 decimals, "Z")."""
    if not text:
        return None
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z", text.strip())
    if match is None:
        return None
    moment = dt.datetime.fromisoformat(match.group(1)).replace(tzinfo=dt.timezone.utc)
    return moment.timestamp() + float(f"0.{match.group(2) or 0}")


def http_get(url: str, headers: dict[str, str], timeout: float) -> tuple[int, bytes]:
    """(status, body) of a GET; HTTP errors are answers here, not exceptions."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
