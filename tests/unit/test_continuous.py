"""Step-level continuous batching on the tiny pipeline, driven the way TorchServe 0.12's frontend drives it.

:class:`Frontend` follows ContinuousBatching.java: every in-flight request is re-sent on each call with an
empty row, new ones join up to ``batch_size``, and a row's ``stop`` flag decides its fate (None: an ordinary
response, the request is done; False: a chunk, it stays; True: the last chunk). The real frontend is
exercised in tests/integration/test_continuous.py.
"""

from __future__ import annotations

import io
import itertools
import json
import time

import numpy as np
import pytest
from PIL import Image

from handler.runtime.core import Core
from handler.wire.replies import DEFERRED_STATUS_HEADER
from tests.helpers import Frontend, body_pixels


def row(**body):
    return {"body": json.dumps(body).encode()}


@pytest.fixture
def continuous_core(tiny_loaded, tiny_settings):
    """Finishers decoded inline, so that which call a request leaves at does not depend on thread timing."""
    counter = itertools.count(1000)
    settings = tiny_settings.with_changes(continuous=True, steps_per_call=1, overlap_side_work=False)
    return Core(tiny_loaded, settings, seed_source=lambda: next(counter))


@pytest.fixture
def frontend(continuous_core):
    return Frontend(continuous_core)


def test_a_request_joins_a_running_loop_and_a_short_one_leaves_before_a_long_one(frontend):
    long = frontend.submit({"prompt": "long", "seed": 1, "num_inference_steps": 6})
    frontend.call()
    frontend.call()
    short = frontend.submit({"prompt": "short", "seed": 2, "num_inference_steps": 2})
    frontend.run_until_idle()

    assert long.status == short.status == 200
    long_batch, short_batch = long.json()["batch"], short.json()["batch"]
    assert long_batch == {
        "scheduling": "continuous",
        "joined_call": 1,
        "left_call": 6,
        "in_flight_at_join": 0,
        "shared_steps": 2,
        "steps_per_call": 1,
        "unet_forwards": 6,
    }
    # The short request joined at call 3, while the long one was at its step 3, and left after 2 calls.
    assert short_batch["joined_call"] == 3 and short_batch["in_flight_at_join"] == 1
    assert short_batch["left_call"] == 4 and short_batch["shared_steps"] == 2
    assert frontend.core.flights == {}


def test_the_image_equals_static_batchings_for_the_same_request(frontend, core):
    body = {"prompt": "a red fox", "seed": 42, "num_inference_steps": 5, "guidance_scale": 6.0}
    static = core.handle([row(**body)])[0].json()
    frontend.submit({"prompt": "other", "seed": 7, "num_inference_steps": 9, "guidance_scale": 3.0})
    frontend.call()
    joined = frontend.submit(body)
    frontend.submit({"prompt": "no guidance", "seed": 8, "num_inference_steps": 3, "guidance_scale": 1.0})
    frontend.run_until_idle()

    assert joined.json()["batch"]["shared_steps"] == 5
    difference = np.abs(body_pixels(joined.json()) - body_pixels(static))
    assert difference.max() <= 1, f"max per-pixel difference {difference.max()}/255"
    assert joined.json()["seeds"] == static["seeds"] == [42]


def test_a_plain_request_gets_one_json_document_and_its_status_with_its_first_chunk(frontend):
    response = frontend.submit({"prompt": "plain", "num_inference_steps": 3})
    frontend.run_until_idle()

    assert response.calls == [1, 2, 3]
    assert response.chunks[:2] == [b"", b""], "nothing but the final body for a request that did not ask to stream"
    assert response.status == 200 and response.content_type == "application/json"
    assert response.headers[DEFERRED_STATUS_HEADER] == "true"
    assert response.json()["parameters"]["num_inference_steps"] == 3


def test_a_request_done_in_its_first_call_gets_an_ordinary_response(continuous_core):
    frontend = Frontend(Core(continuous_core.loaded, continuous_core.settings.with_changes(steps_per_call=4)))
    response = frontend.submit({"prompt": "quick", "num_inference_steps": 4}, accept="image/png")
    frontend.run_until_idle()

    assert response.calls == [1]
    assert response.status == 200 and response.content_type == "image/png"
    assert DEFERRED_STATUS_HEADER not in response.headers
    assert json.loads(response.headers["X-Batch"])["left_call"] == 1
    assert Image.open(io.BytesIO(response.body)).size == (64, 64)


def test_a_raw_image_request_gets_its_headers_with_the_first_chunk_and_the_image_at_the_end(frontend):
    response = frontend.submit({"prompt": "raw", "seed": 9, "num_inference_steps": 3, "output_format": "webp"},
                               accept="image/webp")  # fmt: skip
    frontend.run_until_idle()

    assert response.content_type == "image/webp" and response.headers["X-Seed"] == "9"
    assert json.loads(response.headers["X-Parameters"])["output_format"] == "webp"
    assert Image.open(io.BytesIO(response.body)).format == "WEBP"


def test_a_streamed_request_gets_a_progress_event_per_call_then_its_result(frontend):
    response = frontend.submit({"prompt": "s", "num_inference_steps": 3, "stream": True, "preview_every": 2})
    frontend.run_until_idle()

    events = response.events()
    assert response.content_type == "application/x-ndjson"
    assert [(e["event"], e.get("step")) for e in events] == [
        ("progress", 1),
        ("progress", 2),
        ("preview", 2),
        ("progress", 3),
        ("result", None),
    ]
    assert [len(chunk.splitlines()) for chunk in response.chunks] == [1, 2, 2]
    assert events[-1]["batch"]["scheduling"] == "continuous"


def test_a_bad_request_among_in_flight_ones_gets_its_own_400_and_the_others_go_on(frontend):
    good = frontend.submit({"prompt": "good", "num_inference_steps": 3})
    frontend.call()
    bad = frontend.submit({"prompt": "bad", "width": 1001})
    empty = frontend.submit(b"")
    frontend.run_until_idle()

    assert bad.status == empty.status == 400 and bad.calls == empty.calls == [2]
    assert "`width` must be between 32 and 512 but is 1001" in bad.json()["error"]["message"]
    assert good.status == 200 and "images" in good.json()


def test_a_failure_after_the_first_chunk_arrives_as_the_error_document_in_the_body(frontend):
    response = frontend.submit({"prompt": "slow", "num_inference_steps": 50, "timeout_s": 2.0})
    other = frontend.submit({"prompt": "other", "num_inference_steps": 12})
    frontend.call()  # both join: their 200s go out with the first chunk
    assert response.status == 200
    time.sleep(2.1)  # the budget runs out between calls, whatever the machine's speed
    frontend.run_until_idle()

    assert response.status == 200 and response.headers[DEFERRED_STATUS_HEADER] == "true"
    error = response.json()["error"]
    assert error["code"] == 504 and error["field"] == "timeout_s"
    assert "continuous batching" in error["note"]
    assert "images" in other.json()


def test_streamed_failure_ends_with_an_error_event(frontend):
    response = frontend.submit({"prompt": "slow", "num_inference_steps": 50, "timeout_s": 2.0, "stream": True})
    frontend.call()  # its first progress chunk commits the stream
    time.sleep(2.1)
    frontend.run_until_idle()
    last = response.events()[-1]
    assert last["event"] == "error" and last["code"] == 504


def test_out_of_memory_splits_the_step_and_fails_only_the_request_too_big_alone(tiny_loaded, tiny_settings):
    # 64x64 -> 32x32 tiny latents; guidance doubles the rows: one 1-image request = 2048 latent pixels.
    settings = tiny_settings.with_changes(continuous=True, memory_ceiling_latent_pixels=2048, overlap_side_work=False)
    frontend = Frontend(Core(tiny_loaded, settings))
    small = [frontend.submit({"prompt": f"s{i}", "seed": i, "num_inference_steps": 3}) for i in range(2)]
    big = frontend.submit({"prompt": "big", "num_inference_steps": 3, "num_images_per_prompt": 2})
    frontend.run_until_idle()

    assert [r.status for r in small] == [200, 200] and all("images" in r.json() for r in small)
    assert big.json()["error"]["code"] == 507


def test_a_client_that_leaves_is_forgotten_at_the_next_call(frontend):
    gone = frontend.submit({"prompt": "gone", "num_inference_steps": 20})
    stays = frontend.submit({"prompt": "stays", "num_inference_steps": 4})
    frontend.call()
    frontend.disconnect(gone)
    frontend.call()
    assert list(frontend.core.flights) == ["req-1"]
    frontend.run_until_idle()
    later = frontend.submit({"prompt": "later", "num_inference_steps": 2})
    frontend.run_until_idle()

    assert gone.calls == [1] and stays.status == 200
    assert later.json()["batch"]["in_flight_at_join"] == 0
    assert frontend.core.flights == {}


def test_nothing_is_held_after_a_long_run_of_mixed_requests(frontend):
    for n in range(24):
        frontend.submit({"prompt": f"p{n}", "seed": n, "num_inference_steps": [2, 3, 5][n % 3],
                         "width": [64, 96][n % 2], "stream": n % 4 == 0})  # fmt: skip
        frontend.call()
    frontend.run_until_idle()

    assert all(r.done for r in frontend.responses.values())
    assert frontend.core.flights == {}


def test_metrics_count_each_request_once_when_it_ends(frontend):
    core = frontend.core
    observed = []
    for rows, ids in (([row(prompt="a", num_inference_steps=2)], ["x"]), ([{}], ["x"])):
        call = core.run(core.parse(rows, [None], ids))
        replies = core.render(call)
        observed.append({o.spec.name: o.labels for o in core.metrics(call, replies)})
    assert "sdxl_requests_total" not in observed[0]
    assert observed[1]["sdxl_requests_total"] == {"Outcome": "ok"}


def test_with_overlap_finishers_are_decoded_beside_the_steps_and_images_stay_the_same(tiny_loaded, tiny_settings):
    settings = tiny_settings.with_changes(continuous=True, overlap_side_work=True)
    frontend = Frontend(Core(tiny_loaded, settings))
    inline = Frontend(Core(tiny_loaded, settings.with_changes(overlap_side_work=False)))
    bodies = [{"prompt": f"p{n}", "seed": n, "num_inference_steps": steps} for n, steps in enumerate([2, 9, 3, 5])]
    for driver in (frontend, inline):
        for body in bodies:
            driver.submit(body)
            driver.call()
        driver.run_until_idle()

    overlapped, alone = list(frontend.responses.values()), list(inline.responses.values())
    for a, b in zip(overlapped, alone, strict=True):
        assert a.status == b.status == 200
        assert np.array_equal(body_pixels(a.json()), body_pixels(b.json()))
        assert a.json()["timings_ms"]["vae_decode"] > 0 and a.json()["timings_ms"]["encode_image"] > 0
    # A finisher may leave a call later than inline (its decode runs beside the next step), never earlier.
    assert all(a.calls[-1] >= b.calls[-1] for a, b in zip(overlapped, alone, strict=True))
    assert frontend.core.flights == {}


def test_several_steps_per_call_send_their_progress_events_in_one_chunk(tiny_loaded, tiny_settings):
    settings = tiny_settings.with_changes(continuous=True, steps_per_call=2, overlap_side_work=False)
    frontend = Frontend(Core(tiny_loaded, settings))
    response = frontend.submit({"prompt": "k2", "num_inference_steps": 5, "stream": True})
    frontend.run_until_idle()

    assert response.calls == [1, 2, 3]
    assert [[json.loads(line).get("step") for line in chunk.splitlines()] for chunk in response.chunks] == [
        [1, 2],
        [3, 4],
        [5, None],
    ]
    assert response.events()[-1]["batch"]["steps_per_call"] == 2


def test_an_out_of_memory_split_resumes_at_the_current_step_across_calls(continuous_core, tiny_loaded, monkeypatch):
    from tests.helpers import count_unet_forwards

    forwards = count_unet_forwards(monkeypatch, tiny_loaded, fail_above_rows=2)
    frontend = Frontend(continuous_core)
    pair = [frontend.submit({"prompt": p, "seed": s, "num_inference_steps": 4}) for p, s in (("a", 1), ("b", 2))]
    frontend.run_until_idle()
    # Call 1 shares its step (4 rows); call 2 fails at 4 rows and splits (2 + 2); calls 3-4 keep to 2 rows.
    assert forwards == [4, 2, 2, 2, 2, 2, 2]
    assert [r.calls for r in pair] == [[1, 2, 3, 4]] * 2
    assert all(r.status == 200 and "images" in r.json() for r in pair)
    assert continuous_core.engine.row_caps == {}


def test_a_heun_request_joining_a_running_loop_midway_makes_its_solo_image(frontend, core):
    body = {"prompt": "a heun fox", "seed": 5, "num_inference_steps": 4, "sampler": "heun"}
    solo = core.handle([row(**body)])[0].json()
    frontend.submit({"prompt": "running", "seed": 1, "num_inference_steps": 12, "sampler": "dpmpp_2m"})
    frontend.call()
    frontend.call()
    joined = frontend.submit(body)
    frontend.run_until_idle()

    document = joined.json()
    assert document["batch"]["joined_call"] == 3 and document["batch"]["unet_forwards"] == 7
    assert document["batch"]["shared_steps"] == 7
    difference = np.abs(body_pixels(document) - body_pixels(solo))
    assert difference.max() <= 1, f"max per-pixel difference {difference.max()}/255"
