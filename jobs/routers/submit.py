"""POST /generate: a job in, checked by the same contract as /predictions, before anything is queued."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from handler.contract.errors import InvalidRequest

from ..access import owner_of, services, view
from ..state import TERMINAL
from ..submission import json_body, submit_job, wait_terminal

JOB_FIELDS = ("webhook", "metadata")  # the job API's own fields, beside the /predictions schema
TRANSPORT_FIELDS = ("stream", "response_format")  # /predictions' transport choices: the job API makes them

router = APIRouter()


@router.post("/generate", summary="Submit a job")
async def generate(request: Request) -> JSONResponse:
    """Submit a job: 202 with its id at once (200 with the finished job under ``Prefer: wait=N``).

    1. Key, size and content type.
    2. Strict JSON; the job API's fields apart; the transport fields refused (the job API chooses them).
    3. :func:`jobs.submission.submit_job`: the handler's own contract, then created and queued atomically.
    4. ``Prefer: wait=N``: answer with the finished job if it finishes within N s.
    """
    app = request.app.state
    settings = app.settings
    # 1.
    owner = owner_of(request)
    payload = await json_body(request)
    wait_s = _prefer_wait(request.headers.get("prefer"), settings.max_wait_s)
    # 2.
    if not isinstance(payload, dict):
        raise InvalidRequest(f"request body must be a JSON object but is {type(payload).__name__}")
    job_fields = {name: payload.pop(name) for name in JOB_FIELDS if name in payload}
    for name in TRANSPORT_FIELDS:
        if name in payload:
            raise InvalidRequest(
                f"`{name}` is chosen by the job API (progress is in /jobs/{{id}}/events, the image at "
                f"/jobs/{{id}}/image); leave it out",
                field=name,
                value=payload[name],
            )
    # 3.
    submitted = await submit_job(request, owner, payload, job_fields, request.headers.get("idempotency-key"))
    job_id = submitted.job_id
    if submitted.replayed:
        record = await services(request).state.record(job_id)
        answer = await view(request, record) if record else {"job_id": job_id}
        return JSONResponse(
            answer, status_code=200, headers={"Idempotent-Replayed": "true", "Location": f"/jobs/{job_id}"}
        )
    # 4.
    headers = {"Location": f"/jobs/{job_id}"}
    if wait_s:
        record = await wait_terminal(request, job_id, wait_s)
        headers["Preference-Applied"] = f"wait={wait_s:g}"
        if record["status"] in TERMINAL:
            return JSONResponse(await view(request, record), status_code=200, headers=headers)
    record = await services(request).state.record(job_id)
    return JSONResponse(await view(request, record), status_code=202, headers=headers)


def _prefer_wait(header: str | None, max_wait_s: int) -> float:
    if not header:
        return 0.0
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                seconds = float(value)
            except ValueError:
                raise InvalidRequest(
                    f"`Prefer: wait=N` needs a number of seconds but is {value!r}", field="Prefer", value=header
                ) from None
            if not 0 < seconds <= max_wait_s:
                raise InvalidRequest(
                    f"`Prefer: wait` must be in (0, {max_wait_s}] but is {value}", field="Prefer", value=header
                )
            return seconds
    return 0.0
