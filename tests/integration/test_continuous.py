"""Step-level continuous batching against a real TorchServe 0.12 in ``continuousBatching`` mode.

Joining and leaving are proven from the handler's own accounting (each reply's ``batch`` section: the call a
request joined and left at, how many requests were in flight when it joined), never from timing.
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from handler.runtime.core import Core
from tests.integration.conftest import soak


def post(server, body: dict, headers: dict | None = None, stream: bool = False) -> requests.Response:
    return server.predict(body, headers=headers, stream=stream)


def started_stream(server, body: dict) -> tuple[requests.Response, object, dict]:
    """A streamed request that has certainly joined the loop: its first progress event has arrived."""
    response = post(server, {**body, "stream": True}, stream=True)
    lines = (json.loads(line) for line in response.iter_lines() if line)
    first = next(lines)
    assert first["event"] == "progress" and first["step"] == 1
    return response, lines, first


def pixels(body: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][0]))), dtype=np.int16)


def scrape(server, pattern: str, timeout: float = 30) -> float:
    deadline = time.monotonic() + timeout
    while True:
        text = requests.get(f"{server.metrics_url}/metrics", timeout=10).text
        match = re.search(pattern, text, re.M)
        if match or time.monotonic() > deadline:
            assert match, f"no series matching {pattern!r} in /metrics"
            return float(match.group(1))
        time.sleep(0.5)


def test_a_request_joins_one_that_is_mid_loop_and_leaves_before_it(continuous_server):
    long_response, long_events, _ = started_stream(continuous_server, {"prompt": "long", "num_inference_steps": 30})
    short = post(continuous_server, {"prompt": "short", "num_inference_steps": 3})
    long_result = [event for event in long_events][-1]

    assert short.status_code == 200
    assert short.headers["Transfer-Encoding"] == "chunked" and short.headers["X-Deferred-Status"] == "true"
    short_batch, long_batch = short.json()["batch"], long_result["batch"]
    assert short_batch["scheduling"] == long_batch["scheduling"] == "continuous"
    assert short_batch["in_flight_at_join"] >= 1
    assert long_batch["joined_call"] < short_batch["joined_call"] < short_batch["left_call"] < long_batch["left_call"]
    assert short_batch["shared_steps"] == 3, "every step of the short request shared the long one's UNet forward"
    assert long_result["event"] == "result" and long_response.status_code == 200


def test_the_image_equals_static_batchings(continuous_server, tiny_loaded, tiny_settings):
    body = {"prompt": "a lighthouse at dusk", "seed": 11, "num_inference_steps": 4, "guidance_scale": 6.5}
    static = Core(tiny_loaded, tiny_settings).handle([{"body": json.dumps(body).encode()}])[0].json()
    with ThreadPoolExecutor(3) as pool:
        other = pool.submit(post, continuous_server, {"prompt": "other", "num_inference_steps": 9, "seed": 3})
        served = pool.submit(post, continuous_server, body).result().json()
        assert other.result().status_code == 200

    difference = np.abs(pixels(served) - pixels(static))
    assert difference.max() <= 1, f"max per-pixel difference {difference.max()}/255"


def test_a_bad_request_among_in_flight_ones_gets_a_plain_400_and_the_others_finish(continuous_server):
    _, events, _ = started_stream(continuous_server, {"prompt": "long", "num_inference_steps": 20})
    bad = post(continuous_server, {"prompt": "bad", "guidance_scale": "high"})
    assert bad.status_code == 400 and "Content-Length" in bad.headers
    error = bad.json()["error"]
    assert error["field"] == "guidance_scale" and "high" in error["message"]
    assert [event for event in events][-1]["event"] == "result"


def test_a_plain_request_reads_as_one_json_document_sent_in_one_chunk(continuous_server):
    response = post(continuous_server, {"prompt": "plain", "num_inference_steps": 6}, stream=True)
    chunks = list(response.raw.read_chunked(decode_content=False))
    assert response.status_code == 200 and response.headers["Transfer-Encoding"] == "chunked"
    # The handler answered 6 calls; the 5 empty chunks put nothing on the wire, the body is one chunk.
    assert len(chunks) == 1
    assert json.loads(chunks[0])["parameters"]["num_inference_steps"] == 6


def test_raw_images_and_a_request_done_in_its_first_call(continuous_server):
    raw = post(continuous_server, {"prompt": "raw", "seed": 5, "num_inference_steps": 3}, {"Accept": "image/png"})
    assert raw.status_code == 200 and raw.headers["Content-Type"] == "image/png"
    assert raw.headers["X-Seed"] == "5" and raw.headers["X-Deferred-Status"] == "true"
    assert Image.open(io.BytesIO(raw.content)).size == (64, 64)

    # One step at one step per call: done in its first call, so an ordinary response with its length.
    quick = post(continuous_server, {"prompt": "quick", "num_inference_steps": 1}, {"Accept": "image/png"})
    assert quick.status_code == 200 and "Content-Length" in quick.headers
    assert "X-Deferred-Status" not in quick.headers
    assert json.loads(quick.headers["X-Batch"])["left_call"] == json.loads(quick.headers["X-Batch"])["joined_call"]


def test_a_streamed_request_gets_one_progress_event_per_call_then_its_result(continuous_server):
    response, events, first = started_stream(continuous_server, {"prompt": "s", "num_inference_steps": 4})
    rest = list(events)
    assert response.headers["Content-Type"] == "application/x-ndjson"
    assert [first["step"]] + [e.get("step") for e in rest] == [1, 2, 3, 4, None]
    assert rest[-1]["event"] == "result" and len(rest[-1]["images"]) == 1


def test_a_client_that_disconnects_mid_stream_is_dropped_and_its_state_freed(continuous_server):
    response, _, _ = started_stream(continuous_server, {"prompt": "abandoned", "num_inference_steps": 50})
    response.close()  # the client goes away mid-stream
    # TorchServe drops the request once a chunk finds the connection closed; the handler learns it at its next
    # call, when the request's id stops coming, and frees its state then.
    assert post(continuous_server, {"prompt": "next", "num_inference_steps": 2}).status_code == 200
    assert scrape(continuous_server, r'^sdxl_requests_total\{.*Outcome="disconnected".*\} (\S+)$') == 1
    later = post(continuous_server, {"prompt": "later", "num_inference_steps": 2})
    assert later.status_code == 200
    # Had it stayed, the 50-step request would still be in the loop now.
    assert later.json()["batch"]["in_flight_at_join"] == 0, "nothing of the abandoned request stays in the loop"


def test_a_failure_after_joining_arrives_in_the_body_and_the_client_raises_it(continuous_server):
    from sdxl_client import APIError, SDXLClient

    # 50 steps at 256 px take ~12 s here; joining (the first chunk, ~0.1 s idle, well under 1 s on a loaded
    # machine) stays under the 3 s budget, the whole request far over it.
    body = {"prompt": "slow", "num_inference_steps": 50, "width": 256, "height": 256, "timeout_s": 3.0}
    response = post(continuous_server, body, {"Accept": "image/png"})
    assert response.status_code == 200 and response.headers["X-Deferred-Status"] == "true"
    error = response.json()["error"]
    assert error["code"] == 504 and error["field"] == "timeout_s" and "continuous batching" in error["note"]

    client = SDXLClient(continuous_server.inference_url, token=continuous_server.keys()["inference"])
    with pytest.raises(APIError) as caught:
        client.generate(body)
    assert caught.value.status == 504 and caught.value.field == "timeout_s"


def test_soak_with_abandoned_streams_answers_everyone_and_holds_nothing(continuous_server):
    soak(continuous_server, clients=4, seconds=15, abandon_every=5)
    # The first request's calls let TorchServe notice the last closed connections; 30-step abandoned
    # requests would still be in the loop when the second one joins.
    assert post(continuous_server, {"prompt": "after the soak", "num_inference_steps": 2}).status_code == 200
    later = post(continuous_server, {"prompt": "later", "num_inference_steps": 2})
    assert later.json()["batch"]["in_flight_at_join"] == 0, "abandoned requests left state behind"
