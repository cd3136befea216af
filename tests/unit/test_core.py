"""The serving core end to end on the tiny pipeline, rows in and replies out, without TorchServe."""

import base64
import io
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from handler.runtime.core import Core
from handler.runtime.startup import warm_up
from tests.helpers import count_unet_forwards, decode_images


def row(**body):
    return {"body": json.dumps(body).encode()}


def max_pixel_difference(reply, other) -> int:
    """Largest per-pixel difference of two replies' images (a batch may pick other BLAS kernels: <= 1)."""
    pairs = zip(decode_images(reply), decode_images(other), strict=True)
    return max(int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max()) for a, b in pairs)


def test_a_bad_row_fails_alone_and_replies_keep_row_order(core):
    replies = core.handle(
        [
            row(prompt="one", seed=1),
            row(prompt="two", width=1001),
            {"body": b"{not json"},
            row(prompt="four", seed=4, width=96, output_format="jpeg"),
        ]
    )
    assert [r.status for r in replies] == [200, 400, 400, 200]
    assert replies[1].json()["error"]["field"] == "width"
    assert "`width` must be between 32 and 512 but is 1001" in replies[1].json()["error"]["message"]
    assert "not valid JSON" in replies[2].json()["error"]["message"]
    assert replies[0].json()["parameters"]["prompt"] == "one"
    assert replies[3].json()["parameters"]["prompt"] == "four"
    assert replies[3].json()["batch"] == {
        "scheduling": "static",
        "requests": 4,
        "rejected": 2,
        "groups": 2,
        "group_requests": 1,
        "group_images": 1,
        "unet_forwards": 4,
    }


@pytest.mark.parametrize(("output_format", "pil_format"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_images_come_back_encoded_at_the_requested_size(core, output_format, pil_format):
    reply = core.handle([row(prompt="x", width=96, height=64, output_format=output_format, num_images_per_prompt=2)])[0]
    body = reply.json()
    assert reply.status == 200 and reply.content_type == "application/json"
    assert body["content_type"] == f"image/{output_format}"
    images = decode_images(reply)
    assert [(i.format, i.size) for i in images] == [(pil_format, (96, 64))] * 2


def test_seeds_are_drawn_when_absent_and_echoed_with_every_parameter(core):
    given, drawn = core.handle([row(prompt="a", seed=5, num_images_per_prompt=2), row(prompt="b")])
    assert given.json()["seeds"] == [5, 6]
    assert drawn.json()["seeds"] == [1000]
    parameters = drawn.json()["parameters"]
    assert parameters["seed"] == 1000 and parameters["width"] == 64 and parameters["num_inference_steps"] == 4
    assert set(drawn.json()["timings_ms"]) == {"encode_prompt", "denoise", "vae_decode", "encode_image", "total"}


def test_echoed_seed_reproduces_the_image(core):
    first = core.handle([row(prompt="a cat")])[0].json()
    again = core.handle([row(prompt="a cat", seed=first["seeds"][0])])[0].json()
    assert again["images"] == first["images"]


def _fail_unet_for_width(monkeypatch, loaded, latent_width, exc):
    unet = loaded.pipeline.unet
    real_forward = unet.forward

    def forward(sample, *args, **kwargs):
        if sample.shape[-1] == latent_width:
            raise exc
        return real_forward(sample, *args, **kwargs)

    monkeypatch.setattr(unet, "forward", forward)


@pytest.mark.parametrize(
    ("exc", "status", "kind"),
    [
        (RuntimeError("kernel exploded"), 500, "ServingError"),
        (torch.OutOfMemoryError("out of memory"), 507, "OutOfMemory"),
    ],
)
def test_a_failing_group_fails_only_its_own_rows(core, tiny_loaded, monkeypatch, exc, status, kind):
    # The tiny VAE halves the size: 128 px wide images have 64-wide latents.
    _fail_unet_for_width(monkeypatch, tiny_loaded, 64, exc)
    replies = core.handle([row(prompt="ok", seed=1), row(prompt="boom", width=128), row(prompt="ok2", seed=2)])
    assert [r.status for r in replies] == [200, status, 200]
    error = replies[1].json()["error"]
    assert error["type"] == kind and str(exc) in error["message"]
    # The core is still usable for the same shape once the fault is gone.
    monkeypatch.undo()
    assert core.handle([row(prompt="boom", width=128)])[0].status == 200


def test_a_non_memory_error_in_one_request_of_four_fails_only_it_and_the_others_keep_their_images(
    core, tiny_loaded, tiny_settings, monkeypatch
):
    # One request's sampler fails at its third step, AFTER the shared UNet forward: the step is split at that
    # step, the others go on from there, never from step 0.
    real_make_scheduler = core.denoiser.make_scheduler

    def make_scheduler(request):
        scheduler = real_make_scheduler(request)
        if request.prompt == "boom":
            real_step = scheduler.step

            def step(*args, **kwargs):
                if scheduler.step_index == 2:
                    raise ValueError("sampler diverged")
                return real_step(*args, **kwargs)

            scheduler.step = step
        return scheduler

    monkeypatch.setattr(core.denoiser, "make_scheduler", make_scheduler)
    forwards = count_unet_forwards(monkeypatch, tiny_loaded)
    rows = [row(prompt="a", seed=1), row(prompt="boom", seed=2), row(prompt="c", seed=3), row(prompt="d", seed=4)]
    replies = core.handle(rows)
    assert [r.status for r in replies] == [200, 500, 200, 200]
    error = replies[1].json()["error"]
    assert error["type"] == "ServingError" and "ValueError: sampler diverged" in error["message"]
    # 4 steps: 2 shared forwards, the failing third (4 requests), its retries (halves, then quarters), the last.
    assert forwards[:3] == [8, 8, 8] and sum(forwards) < 4 * 8 + 3 * 8
    assert [r.json()["batch"]["group_requests"] for r in replies if r.status == 200] == [4, 4, 4]

    monkeypatch.undo()
    for index in (0, 2, 3):
        alone = Core(tiny_loaded, tiny_settings).handle([rows[index]])[0]
        assert max_pixel_difference(replies[index], alone) <= 1


def test_an_out_of_memory_split_resumes_at_the_current_step_and_keeps_to_what_fits(core, tiny_loaded, monkeypatch):
    solo = [core.handle([row(prompt=p, seed=s)])[0] for p, s in (("a", 1), ("b", 2))]
    forwards = count_unet_forwards(monkeypatch, tiny_loaded, fail_above_rows=2)
    replies = core.handle([row(prompt="a", seed=1), row(prompt="b", seed=2)])
    # Step 1 shared (4 rows); step 2 fails at 4 rows and is split (2 + 2); steps 3-4 keep to 2 rows at once.
    # A restart from step 0 would take 1 + 4 + 4 = 9 forwards.
    assert forwards == [4, 2, 2, 2, 2, 2, 2]
    assert all(max_pixel_difference(r, alone) <= 1 for r, alone in zip(replies, solo, strict=True))
    monkeypatch.undo()
    assert core.engine.row_caps == {}  # learned per batch: forgotten once nothing is in flight


def test_a_reply_over_max_response_bytes_becomes_a_507_for_that_row_only(tiny_loaded, tiny_settings):
    small = Core(tiny_loaded, tiny_settings.with_changes(max_response_bytes=20_000), seed_source=lambda: 1)
    replies = small.handle([row(prompt="a"), row(prompt="b", num_images_per_prompt=4)])
    assert replies[0].status == 200
    assert replies[1].status == 507
    assert "exceeds max_response_bytes=20000" in replies[1].json()["error"]["message"]


def test_warmup_runs_every_configured_shape(tiny_loaded, tiny_settings):
    from handler.contract.settings import WarmupShape

    shapes = (WarmupShape(64, 64, 1, 1), WarmupShape(96, 32, 2, 2))
    warm = Core(tiny_loaded, tiny_settings.with_changes(warmup=shapes))
    assert len(warm_up(warm)) == 3  # the two shapes, then img2img at the first (the VAE encoder)


def test_build_core_prefers_the_yaml_model_path(tiny_model_dir, tmp_path):
    from handler.runtime.startup import build_core

    warmup = [{"width": 64, "height": 64, "num_inference_steps": 1}]  # the default 1024 px takes minutes
    core = build_core(str(tmp_path), {"handler": {"model_path": str(tiny_model_dir), "warmup": warmup}})
    assert core.loaded.source == str(tiny_model_dir)


def test_without_a_yaml_the_default_size_is_the_models_own_and_each_warmup_shape_is_logged(tiny_model_dir, caplog):
    from handler.runtime.startup import build_core

    with caplog.at_level(logging.INFO, logger="handler.runtime.startup"):
        core = build_core(str(tiny_model_dir), None)  # an archive built without --config-file
    assert (core.settings.defaults.width, core.settings.defaults.height) == (64, 64)  # 32 x 2, not SDXL's 1024
    assert "default size 64x64: the model's own" in caplog.text
    assert "warmup 64x64 x1, 2 steps: starting" in caplog.text and "warmup 64x64 x1, 2 steps: " in caplog.text


def test_a_warmup_past_the_start_up_budget_fails_saying_what_to_change(tiny_loaded, tiny_settings):
    from handler.contract.errors import ConfigError
    from handler.contract.settings import WarmupShape

    slow = Core(tiny_loaded, tiny_settings.with_changes(warmup=(WarmupShape(512, 512, 50, 1),)))
    with pytest.raises(ConfigError, match=r"warmup 512x512 x1, 50 steps did not finish within the start-up budget"):
        warm_up(slow, budget_s=0.2)  # 50 steps at 512 px take seconds on a CPU


def test_parallel_image_encoding_gives_the_same_bytes_as_serial(tiny_loaded, tiny_settings):
    rows = [row(prompt="a", seed=1, num_images_per_prompt=3), row(prompt="b", seed=2, output_format="webp")]
    serial = Core(tiny_loaded, tiny_settings.with_changes(encode_threads=1)).handle(rows)
    parallel = Core(tiny_loaded, tiny_settings.with_changes(encode_threads=8)).handle(rows)
    assert [r.json()["images"] for r in serial] == [r.json()["images"] for r in parallel]
    assert len(parallel[0].json()["images"]) == 3


def stream_lines(chunks: list[dict[int, bytes]], row_index: int) -> list[dict]:
    return [json.loads(line) for chunk in chunks if row_index in chunk for line in chunk[row_index].splitlines()]


def test_streamed_rows_get_progress_per_step_and_plain_rows_get_nothing_early(core):
    sent: list[dict[int, bytes]] = []
    replies = core.handle(
        [
            row(prompt="streamed", seed=1, stream=True, num_inference_steps=4, preview_every=2),
            row(prompt="plain", seed=2, num_inference_steps=3),
            row(prompt="streamed too", seed=3, stream=True, num_inference_steps=2, width=96),
        ],
        emit=sent.append,
    )
    assert all(1 not in chunk for chunk in sent)
    first = stream_lines(sent, 0)
    assert [(e["event"], e["step"]) for e in first] == [
        ("progress", 1),
        ("progress", 2),
        ("preview", 2),
        ("progress", 3),
        ("progress", 4),
    ]
    assert all(e["total_steps"] == 4 and e["elapsed_s"] >= 0 and e["eta_s"] >= 0 for e in first if "eta_s" in e)
    preview = next(e for e in first if e["event"] == "preview")
    assert Image.open(io.BytesIO(base64.b64decode(preview["images"][0]))).size == (32, 32)  # latent size
    assert [e["step"] for e in stream_lines(sent, 2)] == [1, 2]

    final = [json.loads(r.body) for r in replies]
    assert replies[0].content_type == "application/x-ndjson" and replies[0].body.endswith(b"\n")
    assert final[0]["event"] == "result" and final[0]["seeds"] == [1]
    assert "event" not in final[1] and final[1]["seeds"] == [2]
    plain = core.handle([row(prompt="streamed", seed=1, num_inference_steps=4)])[0].json()
    assert final[0]["images"] == plain["images"]


def test_a_failure_after_the_stream_started_ends_it_with_an_error_event(core, tiny_loaded, monkeypatch):
    sent = []
    unet, real_forward, calls = tiny_loaded.pipeline.unet, tiny_loaded.pipeline.unet.forward, []

    def forward(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("device lost")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(unet, "forward", forward)
    reply = core.handle([row(prompt="x", stream=True, num_inference_steps=4)], emit=sent.append)[0]
    assert [e["step"] for e in stream_lines(sent, 0)] == [1, 2]
    assert reply.status == 200  # the stream already said 200; the outcome is its last line
    event = json.loads(reply.body)
    assert event["event"] == "error" and event["code"] == 500 and "device lost" in event["message"]


def test_raw_image_reply_carries_seed_and_parameters_in_headers(core):
    reply = core.handle([row(prompt="x", seed=9, response_format="image", output_format="webp", width=96)])[0]
    assert reply.status == 200 and reply.content_type == "image/webp"
    image = Image.open(io.BytesIO(reply.body))
    assert (image.format, image.size) == ("WEBP", (96, 64))
    assert reply.headers["X-Seed"] == "9"
    assert json.loads(reply.headers["X-Parameters"])["width"] == 96


def test_accept_header_asks_for_a_raw_image(core):
    replies = core.handle([row(prompt="x"), row(prompt="y")], accepts=["image/jpeg", "application/json"])
    assert replies[0].content_type == "image/jpeg" and Image.open(io.BytesIO(replies[0].body)).format == "JPEG"
    assert replies[1].json()["content_type"] == "image/png"


def test_time_budget_stops_one_request_with_504_and_not_its_batch_mates(core):
    replies = core.handle(
        [
            row(prompt="slow", num_inference_steps=50, timeout_s=0.3),
            row(prompt="quick", num_inference_steps=3),
        ]
    )
    assert replies[0].status == 504
    error = replies[0].json()["error"]
    assert error["type"] == "TimeBudgetExceeded" and error["field"] == "timeout_s"
    assert "ran out after step" in error["message"] and "of 50" in error["message"]
    assert replies[1].status == 200


def test_out_of_memory_splits_the_group_and_only_a_request_failing_alone_gets_507(tiny_loaded, tiny_settings):
    # 64x64 images: 32x32 latents, 2 UNet rows per image with guidance = 2048 latent pixels per image.
    tight = Core(tiny_loaded, tiny_settings.with_changes(memory_ceiling_latent_pixels=4096))
    rows = [
        row(prompt="a", seed=1),
        row(prompt="b", seed=2),
        row(prompt="c", seed=3, num_images_per_prompt=4),
        row(prompt="d", seed=4),
    ]
    replies = tight.handle(rows)
    assert [r.status for r in replies] == [200, 200, 507, 200]
    error = replies[2].json()["error"]
    assert error["type"] == "OutOfMemory" and "even alone" in error["message"]
    assert "memory_ceiling_latent_pixels=4096" in error["message"]
    # Nothing else was lost, and the survivors' images are the ones they get with memory to spare.
    roomy = Core(tiny_loaded, tiny_settings).handle([rows[0], rows[3]])
    assert replies[0].json()["images"] == roomy[0].json()["images"]
    assert replies[3].json()["images"] == roomy[1].json()["images"]


def test_close_forgets_the_requests_in_flight_and_stops_the_side_worker(tiny_loaded, tiny_settings):
    core = Core(tiny_loaded, tiny_settings.with_changes(continuous=True, overlap_side_work=True))
    call = core.parse([{"body": b'{"prompt": "left running", "num_inference_steps": 8}'}], None, ["a"])
    core.run(call)
    assert list(core.flights) == ["a"] and core.engine.side.executor is not None
    core.close()
    assert core.flights == {}
    with pytest.raises(RuntimeError):  # a stopped executor takes no more work
        core.engine.side.executor.submit(lambda: None)


def test_text_that_is_not_unicode_is_a_400_for_its_row_and_its_batch_mates_succeed(core):
    good, bad, nested = core.handle(
        [
            {"body": b'{"prompt": "a red fox", "seed": 3}'},
            {"body": b'{"prompt": "fox \\ud800 snow", "seed": 4}'},
            {"body": b'{"prompt": "x", "negative_prompt": "\\udfff"}'},
        ]
    )
    assert good.status == 200 and good.json()["seeds"] == [3]
    assert bad.status == 400 and bad.json()["error"]["field"] == "prompt"
    assert "\\ud800" in bad.json()["error"]["message"]
    assert nested.status == 400 and nested.json()["error"]["field"] == "negative_prompt"
