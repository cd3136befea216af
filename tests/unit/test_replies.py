"""The one rule for a request's last reply, whichever mode sent its first bytes (handler/wire/replies.py)."""

import json

import pytest

from handler.contract.errors import TimeBudgetExceeded
from handler.contract.parse import parse_request
from handler.wire.replies import DEFERRED_NOTE, NDJSON, chunk_reply, error_reply, final_reply, success_reply


def request(**fields):
    return parse_request({"prompt": "x", "seed": 5, **fields})


def success(req):
    return success_reply(req, [5], [b"\x89PNG-bytes"], {"total": 12.34}, {"scheduling": "static"}, 10_000)


@pytest.mark.parametrize("committed", [False, True])
def test_a_streamed_request_ends_with_its_unsent_events_then_a_result_event(committed):
    req = request(stream=True)
    reply = final_reply(success(req), req, b'{"event":"progress","step":4}\n', committed)
    lines = [json.loads(line) for line in reply.body.splitlines()]
    assert reply.content_type == NDJSON and [e["event"] for e in lines] == ["progress", "result"]
    assert lines[1]["seeds"] == [5] and lines[1]["timings_ms"] == {"total": 12.3}
    assert reply.stop is (True if committed else None) and reply.outcome == "ok"


def test_an_error_before_any_byte_went_out_is_an_ordinary_response_even_for_a_stream():
    req = request(stream=True)
    reply = final_reply(error_reply(TimeBudgetExceeded("late", field="timeout_s", value=1)), req, b"", False)
    assert (reply.status, reply.content_type, reply.stop) == (504, "application/json", None)


def test_an_error_after_the_first_chunk_travels_under_200_but_keeps_its_outcome():
    streamed, plain = request(stream=True), request()
    error = error_reply(TimeBudgetExceeded("late", field="timeout_s", value=1))
    event = final_reply(error, streamed, b"", True)
    assert event.status == 200 and json.loads(event.body) | {"event": "error"} == json.loads(event.body)
    deferred = final_reply(error, plain, b"", True)
    assert deferred.status == 200 and deferred.json()["error"]["note"] == DEFERRED_NOTE
    assert (event.outcome, deferred.outcome, deferred.code, deferred.stop) == ("server_error",) * 2 + (504, True)


def test_only_the_first_chunk_carries_headers_and_a_raw_image_request_hears_its_seed_early():
    req = request(response_format="image", output_format="webp")
    first, later = chunk_reply(req, b"", first=True), chunk_reply(req, b"", first=False)
    assert first.content_type == "image/webp" and first.headers["X-Seed"] == "5"
    assert first.headers["X-Deferred-Status"] == "true" and later.headers == {}
    assert first.stop is later.stop is False
