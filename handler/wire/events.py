"""The stream-event vocabulary, in one place (torch-free): the NDJSON lines ``"stream": true`` sends, which the
job API's dispatcher relays into a job's event log, the gateway serves over SSE and WebSocket, and the clients
read. Every producer and reader names events through these constants."""

from __future__ import annotations

import json
from typing import Any

PROGRESS = "progress"  # after each step: step, total_steps, elapsed_s, eta_s
PREVIEW = "preview"  # every `preview_every` steps: low-resolution JPEGs decoded from the latents
PARKED = (
    "parked"  # the step policy left it out of a step (handler.runtime.step_policy): step, total_steps, once per wait
)
RESULT = "result"  # the last line of a success: the response body's fields
ERROR = "error"  # the last line of a failure: code, type, message[, field, value]
STATUS = "status"  # the job API's own: a job's status changed (pending, processing, completed, ...)

STREAM_EVENTS = (PROGRESS, PREVIEW, PARKED, RESULT, ERROR)
RELAYED = (PROGRESS, PREVIEW, PARKED)  # what a dispatcher copies into a job's log as they come


def event_line(event: str, **fields: Any) -> bytes:
    """One NDJSON line ``{"event": <event>, **fields}``."""
    if event not in STREAM_EVENTS:
        raise ValueError(f"unknown stream event {event!r}; known: {', '.join(STREAM_EVENTS)}")
    return json.dumps({"event": event, **fields}, separators=(",", ":")).encode() + b"\n"
