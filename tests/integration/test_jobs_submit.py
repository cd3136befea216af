"""Submits at their edges, on a real Redis (gateway as a process; no dispatcher unless a test starts one): text
that cannot be encoded, an Idempotency-Key after a failed submit, metadata measured in UTF-8 bytes, and the caps
under a concurrent burst."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration.jobs_stack import JobStack

SURROGATE_BODY = b'{"prompt": "fox \\ud800 snow", "seed": 1}'  # valid JSON, not encodable text


@pytest.fixture(scope="module")
def idle(tmp_path_factory, server):
    stack = JobStack(tmp_path_factory.mktemp("submits"), server, settings={"max_open_per_key": 20}).start(dispatchers=0)
    yield stack
    stack.stop()


def test_a_lone_surrogate_is_a_400_naming_the_field_at_both_doors(idle, server):
    gateway = idle.submit(SURROGATE_BODY)
    direct = server.predict(SURROGATE_BODY)
    for answer in (gateway, direct):
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["field"] == "prompt" and "\\ud800" in error["message"], error
        assert error["value"] == "fox \\ud800 snow"
    assert gateway.json()["error"]["message"] == direct.json()["error"]["message"]
    # a nested field is named by its path
    nested = idle.submit(b'{"prompt": "x", "loras": [{"name": "ink\\udfff"}]}')
    assert nested.status_code == 400 and nested.json()["error"]["field"] == "loras[0].name", nested.text
    # the server kept serving
    assert server.predict({"prompt": "still here", "seed": 2}).status_code == 200


def test_an_idempotency_key_is_free_again_after_a_failed_submit(idle):
    headers = {"Idempotency-Key": "retry-after-a-mistake"}
    assert idle.submit(SURROGATE_BODY, headers=headers).status_code == 400
    fixed = idle.submit({"prompt": "fox snow", "seed": 1}, headers=headers)
    assert fixed.status_code == 202, fixed.text
    replay = idle.submit({"prompt": "fox snow", "seed": 1}, headers=headers)
    assert replay.status_code == 200 and replay.json()["job_id"] == fixed.json()["job_id"]
    assert idle.job(fixed.json()["job_id"])["status"] == "pending"
    assert idle.cancel(fixed.json()["job_id"]).status_code == 200


def test_a_withdrawn_submit_leaves_no_key_behind(idle):
    """What the gateway does when SAQ cannot take a job: every key the submit wrote goes, its claim too."""
    from redis.asyncio import Redis

    from jobs.state import JobState

    async def check() -> tuple[set, set]:
        redis = Redis(port=idle.redis.port)
        state = JobState(redis, 3600, 86400)
        before = set(await redis.keys("*"))
        claim = (state.idempotency_key("default", "withdrawn"), "print")
        created = await state.create(
            "job_withdrawn", "default", b"{}", {"prompt": "x"}, max_pending=100, max_open=100, idempotency=claim
        )
        assert created is None and await redis.get(claim[0]) == b"job_withdrawn print"
        await state.withdraw("job_withdrawn", "default", claim)
        after = set(await redis.keys("*"))
        members = await redis.smembers(state.PENDING), await redis.smembers(state.open_key("default"))
        await redis.aclose()
        assert not any(b"job_withdrawn" in m for group in members for m in group)
        return before, after

    before, after = asyncio.run(check())
    assert after == before


def test_metadata_is_measured_in_utf8_bytes(idle):
    accented = {"note": "é" * 1500}  # 3,011 bytes of compact UTF-8 JSON; 9,012 as json.dumps escapes it
    assert len(json.dumps(accented, ensure_ascii=False, separators=(",", ":")).encode()) == 3011
    assert len(json.dumps(accented)) == 9012
    accepted = idle.submit({"prompt": "meta", "metadata": accented})
    assert accepted.status_code == 202, accepted.text
    assert idle.cancel(accepted.json()["job_id"]).status_code == 200
    over = idle.submit({"prompt": "meta", "metadata": {"note": "é" * 2100}})
    assert over.status_code == 400 and over.json()["error"]["field"] == "metadata", over.text
    assert "4211" in over.json()["error"]["message"]


def test_the_per_key_cap_holds_under_a_concurrent_burst(idle):
    """max_open_per_key 20; 64 submits from 16 threads at once: exactly 20 accepted, the rest 429."""
    open_before = len(idle.redis_client().smembers("sdxl:open:default"))
    assert open_before == 0
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: idle.submit({"prompt": f"burst {i}", "seed": i}), range(64)))
    codes = sorted(answer.status_code for answer in answers)
    assert codes.count(202) == 20 and codes.count(429) == 44, codes
    assert len(idle.redis_client().smembers("sdxl:open:default")) == 20
    for answer in answers:
        if answer.status_code == 202:
            assert idle.cancel(answer.json()["job_id"]).status_code == 200
    assert len(idle.redis_client().smembers("sdxl:open:default")) == 0
