"""A job record (state.py) as the API shows it: one function, used by GET /jobs/{id}, every status event's
answer, Prefer: wait, the web page and the webhook payloads."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

from .state import TERMINAL


def iso(seconds: str | float | None) -> str | None:
    if seconds in (None, ""):
        return None
    moment = datetime.fromtimestamp(float(seconds), tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def shown_status(record: dict[str, str], result_ttl_s: int, now: float | None = None) -> str:
    """``expired`` once a finished job is older than the results' time to live."""
    status = record["status"]
    finished = record.get("finished_at")
    if status in TERMINAL and finished and (now or time.time()) > float(finished) + result_ttl_s:
        return "expired"
    return status


def job_view(
    record: dict[str, str],
    *,
    base_url: str,
    result_ttl_s: int,
    queue_position: int | None = None,
    estimated_time: float | None = None,
) -> dict[str, Any]:
    """The JSON object of one job. ``base_url`` makes ``image_url`` absolute (no trailing slash)."""
    status = shown_status(record, result_ttl_s)
    loaded = {
        name: json.loads(record[name])
        for name in ("parameters", "error", "metadata", "seeds", "images")
        if record.get(name)
    }
    images = loaded.get("images") or []
    step, total = int(record.get("step") or 0), int(record.get("total_steps") or 0)
    done = status == "completed"
    if status == "processing" and estimated_time is None and record.get("eta_s"):
        estimated_time = float(record["eta_s"])
    job_id = record["id"]
    return {
        "job_id": job_id,
        "status": status,
        "progress": 1.0 if done else (round(step / total, 4) if total else 0.0),
        "step": total if done else step,
        "total_steps": total or None,
        "queue_position": queue_position if status == "pending" else None,
        "estimated_time": None if status in (*TERMINAL, "expired") else _round(estimated_time),
        "image_url": f"{base_url}/jobs/{job_id}/image" if done and images else None,
        "image_urls": [f"{base_url}/jobs/{job_id}/image?index={i}" for i in range(len(images))] if done else [],
        "prompt": record.get("prompt"),
        "seed": (loaded.get("seeds") or [None])[0],
        "seeds": loaded.get("seeds"),
        "parameters": loaded.get("parameters"),
        "error": _expired_error(record, result_ttl_s) if status == "expired" else loaded.get("error"),
        "metadata": loaded.get("metadata"),
        "created_at": iso(record.get("created_at")),
        "started_at": iso(record.get("started_at")),
        "finished_at": iso(record.get("finished_at")),
        "attempt": int(record.get("attempt") or 0),
        "expires_at": iso(float(record["finished_at"]) + result_ttl_s) if record.get("finished_at") else None,
    }


def _expired_error(record: dict[str, str], result_ttl_s: int) -> dict[str, Any]:
    message = f"the job finished at {iso(record['finished_at'])}; results are kept {result_ttl_s} s"
    return {"code": 410, "type": "Expired", "message": message}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
