"""The serving core end to end on the tiny pipeline, rows in and replies out, without TorchServe."""

import base64
import io
import json

import pytest
import torch
from PIL import Image

from handler.service import SDXLService


def row(**body):
    return {"body": json.dumps(body).encode()}


def decode_images(reply):
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in reply.json()["images"]]


def test_a_bad_row_fails_alone_and_replies_keep_row_order(service):
    replies = service.handle(
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
    }


@pytest.mark.parametrize(("output_format", "pil_format"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_images_come_back_encoded_at_the_requested_size(service, output_format, pil_format):
    reply = service.handle(
        [row(prompt="x", width=96, height=64, output_format=output_format, num_images_per_prompt=2)]
    )[0]
    body = reply.json()
    assert reply.status == 200 and reply.content_type == "application/json"
    assert body["content_type"] == f"image/{output_format}"
    images = decode_images(reply)
    assert [(i.format, i.size) for i in images] == [(pil_format, (96, 64))] * 2


def test_seeds_are_drawn_when_absent_and_echoed_with_every_parameter(service):
    given, drawn = service.handle([row(prompt="a", seed=5, num_images_per_prompt=2), row(prompt="b")])
    assert given.json()["seeds"] == [5, 6]
    assert drawn.json()["seeds"] == [1000]
    parameters = drawn.json()["parameters"]
    assert parameters["seed"] == 1000 and parameters["width"] == 64 and parameters["num_inference_steps"] == 4
    assert set(drawn.json()["timings_ms"]) == {"encode_prompt", "denoise", "vae_decode", "encode_image", "total"}


def test_echoed_seed_reproduces_the_image(service):
    first = service.handle([row(prompt="a cat")])[0].json()
    again = service.handle([row(prompt="a cat", seed=first["seeds"][0])])[0].json()
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
def test_a_failing_group_fails_only_its_own_rows(service, tiny_loaded, monkeypatch, exc, status, kind):
    # The tiny VAE halves the size: 128 px wide images have 64-wide latents.
    _fail_unet_for_width(monkeypatch, tiny_loaded, 64, exc)
    replies = service.handle([row(prompt="ok", seed=1), row(prompt="boom", width=128), row(prompt="ok2", seed=2)])
    assert [r.status for r in replies] == [200, status, 200]
    error = replies[1].json()["error"]
    assert error["type"] == kind and str(exc) in error["message"]
    # The service is still usable for the same shape once the fault is gone.
    monkeypatch.undo()
    assert service.handle([row(prompt="boom", width=128)])[0].status == 200


def test_a_reply_over_max_response_bytes_becomes_a_507_for_that_row_only(tiny_loaded, tiny_settings):
    small = SDXLService(tiny_loaded, tiny_settings.with_changes(max_response_bytes=20_000), seed_source=lambda: 1)
    replies = small.handle([row(prompt="a"), row(prompt="b", num_images_per_prompt=4)])
    assert replies[0].status == 200
    assert replies[1].status == 507
    assert "exceeds max_response_bytes=20000" in replies[1].json()["error"]["message"]


def test_warmup_runs_every_configured_shape(tiny_loaded, tiny_settings):
    from handler.settings import WarmupShape

    shapes = (WarmupShape(64, 64, 1, 1), WarmupShape(96, 32, 2, 2))
    warm = SDXLService(tiny_loaded, tiny_settings.with_changes(warmup=shapes))
    assert len(warm.warmup()) == 2


def test_from_model_dir_prefers_the_yaml_model_path(tiny_model_dir, tmp_path):
    service = SDXLService.from_model_dir(str(tmp_path), {"handler": {"model_path": str(tiny_model_dir)}})
    assert service.loaded.source == str(tiny_model_dir)


def test_parallel_image_encoding_gives_the_same_bytes_as_serial(tiny_loaded, tiny_settings):
    rows = [row(prompt="a", seed=1, num_images_per_prompt=3), row(prompt="b", seed=2, output_format="webp")]
    serial = SDXLService(tiny_loaded, tiny_settings.with_changes(encode_threads=1)).handle(rows)
    parallel = SDXLService(tiny_loaded, tiny_settings.with_changes(encode_threads=8)).handle(rows)
    assert [r.json()["images"] for r in serial] == [r.json()["images"] for r in parallel]
    assert len(parallel[0].json()["images"]) == 3


def stream_lines(chunks: list[dict[int, bytes]], row_index: int) -> list[dict]:
    return [json.loads(line) for chunk in chunks if row_index in chunk for line in chunk[row_index].splitlines()]


def test_streamed_rows_get_progress_per_step_and_plain_rows_get_nothing_early(service):
    sent: list[dict[int, bytes]] = []
    replies = service.handle(
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
    plain = service.handle([row(prompt="streamed", seed=1, num_inference_steps=4)])[0].json()
    assert final[0]["images"] == plain["images"]


def test_a_failure_after_the_stream_started_ends_it_with_an_error_event(service, tiny_loaded, monkeypatch):
    sent = []
    unet, real_forward, calls = tiny_loaded.pipeline.unet, tiny_loaded.pipeline.unet.forward, []

    def forward(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("device lost")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(unet, "forward", forward)
    reply = service.handle([row(prompt="x", stream=True, num_inference_steps=4)], emit=sent.append)[0]
    assert [e["step"] for e in stream_lines(sent, 0)] == [1, 2]
    assert reply.status == 200  # the stream already said 200; the outcome is its last line
    event = json.loads(reply.body)
    assert event["event"] == "error" and event["code"] == 500 and "device lost" in event["message"]


def test_raw_image_reply_carries_seed_and_parameters_in_headers(service):
    reply = service.handle([row(prompt="x", seed=9, response_format="image", output_format="webp", width=96)])[0]
    assert reply.status == 200 and reply.content_type == "image/webp"
    image = Image.open(io.BytesIO(reply.body))
    assert (image.format, image.size) == ("WEBP", (96, 64))
    assert reply.headers["X-Seed"] == "9"
    assert json.loads(reply.headers["X-Parameters"])["width"] == 96


def test_accept_header_asks_for_a_raw_image(service):
    replies = service.handle([row(prompt="x"), row(prompt="y")], accepts=["image/jpeg", "application/json"])
    assert replies[0].content_type == "image/jpeg" and Image.open(io.BytesIO(replies[0].body)).format == "JPEG"
    assert replies[1].json()["content_type"] == "image/png"


def test_time_budget_stops_one_request_with_504_and_not_its_batch_mates(service):
    replies = service.handle(
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
    tight = SDXLService(tiny_loaded, tiny_settings.with_changes(memory_ceiling_latent_pixels=4096))
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
    roomy = SDXLService(tiny_loaded, tiny_settings).handle([rows[0], rows[3]])
    assert replies[0].json()["images"] == roomy[0].json()["images"]
    assert replies[3].json()["images"] == roomy[1].json()["images"]
