"""Webhooks: checked at submit, signed, delivered by a SAQ queue of their own with retries and backoff.

Signatures follow Standard Webhooks: headers ``webhook-id`` (one delivery id, the same on every retry, so
receivers can de-duplicate), ``webhook-timestamp`` (Unix seconds) and ``webhook-signature: v1,<base64
HMAC-SHA256 of "<id>.<timestamp>.<body>">``. Redirects are never followed (a 3xx is a failed attempt), and only
hosts in ``webhook_allowed_hosts`` are called: no server-side request forgery by default.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from handler.contract.errors import InvalidRequest

from .settings import JobSettings

DELIVER = "deliver_webhook"
WEBHOOK_EVENTS = {"completed": "job.completed", "failed": "job.failed", "canceled": "job.canceled"}


def check_webhook(url: Any, settings: JobSettings) -> str:
    """The submitted ``webhook``, or a 400 naming what is wrong with it."""
    if not isinstance(url, str) or len(url) > 2048:
        raise InvalidRequest("`webhook` must be a URL string of at most 2048 characters", field="webhook", value=url)
    parts = urlsplit(url)
    schemes = ("https", "http") if settings.webhook_allow_http else ("https",)
    if parts.scheme not in schemes or not parts.hostname:
        raise InvalidRequest(
            f"`webhook` must be an {' or '.join(schemes)} URL but is {url!r}", field="webhook", value=url
        )
    if parts.username or parts.password:
        raise InvalidRequest("`webhook` may not carry credentials", field="webhook", value=url)
    if parts.hostname.lower() not in settings.webhook_allowed_hosts:
        allowed = ", ".join(settings.webhook_allowed_hosts) or "none (webhooks are off on this server)"
        raise InvalidRequest(
            f"`webhook` host {parts.hostname!r} is not allowed; allowed hosts: {allowed}", field="webhook", value=url
        )
    return url


def sign(secret: str, delivery_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance_s: int = 300) -> bool:
    """What a receiver does (and the tests): signature matches and the timestamp is fresh."""
    timestamp = int(headers["webhook-timestamp"])
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    expected = sign(secret, headers["webhook-id"], timestamp, body)
    return any(hmac.compare_digest(expected, s) for s in headers["webhook-signature"].split())


def payload(delivery_id: str, status: str, job: dict[str, Any]) -> bytes:
    document = {"id": delivery_id, "type": WEBHOOK_EVENTS[status], "timestamp": time.time(), "data": job}
    return json.dumps(document, separators=(",", ":")).encode()


async def deliver(settings: JobSettings, url: str, delivery_id: str, body: bytes) -> int:
    """POST one attempt; raise (so SAQ retries) unless the receiver answered 2xx."""
    check_webhook(url, settings)  # the allow-list may have shrunk since submit
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "sdxl-torchserve-webhooks",
        "webhook-id": delivery_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(settings.webhook_secret or "", delivery_id, timestamp, body),
    }
    async with httpx.AsyncClient(follow_redirects=False, timeout=settings.webhook_timeout_s) as client:
        response = await client.post(url, content=body, headers=headers)
    if not 200 <= response.status_code < 300:
        raise RuntimeError(f"webhook {delivery_id} to {url}: HTTP {response.status_code}")
    return response.status_code
