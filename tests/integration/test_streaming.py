"""Streaming, raw image responses, time budgets and the CLI against a real TorchServe."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import requests
from PIL import Image

from tests.integration.conftest import while_worker_is_busy


def post(server, body: dict, headers: dict | None = None, stream: bool = False) -> requests.Response:
    return server.predict(body, headers=headers, stream=stream)


def streamed(server, body: dict) -> tuple[requests.Response, list[dict]]:
    response = post(server, {**body, "stream": True}, stream=True)
    return response, [json.loads(line) for line in response.iter_lines() if line]


def plain(server, body: dict) -> tuple[requests.Response, dict]:
    response = post(server, body)
    return response, response.json()


def together(server, calls: list) -> list:
    return while_worker_is_busy(server, calls)


def test_two_streamed_requests_in_one_batch_get_their_events_in_order(server):
    (first, first_events), (second, second_events) = together(
        server,
        [
            (streamed, {"prompt": "a", "seed": 1, "num_inference_steps": 5, "preview_every": 2}),
            (streamed, {"prompt": "b", "seed": 2, "num_inference_steps": 3}),
        ],
    )
    for response in (first, second):
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/x-ndjson"
        assert response.headers.get("Transfer-Encoding") == "chunked"
    assert [(e["event"], e.get("step")) for e in first_events] == [
        ("progress", 1),
        ("progress", 2),
        ("preview", 2),
        ("progress", 3),
        ("progress", 4),
        ("preview", 4),
        ("progress", 5),
        ("result", None),
    ]
    assert [(e["event"], e.get("step")) for e in second_events] == [
        ("progress", 1),
        ("progress", 2),
        ("progress", 3),
        ("result", None),
    ]
    assert first_events[-1]["batch"]["requests"] == 2 and second_events[-1]["batch"]["requests"] == 2
    assert first_events[-1]["seeds"] == [1] and second_events[-1]["seeds"] == [2]
    _, alone = plain(server, {"prompt": "a", "seed": 1, "num_inference_steps": 5})
    assert first_events[-1]["images"] == alone["images"]


def test_a_batch_mixing_streamed_and_plain_requests(server):
    (s_response, events), (p_response, document) = together(
        server, [(streamed, {"prompt": "s", "seed": 3}), (plain, {"prompt": "p", "seed": 4})]
    )
    assert s_response.status_code == p_response.status_code == 200
    assert [e["event"] for e in events] == ["progress"] * 4 + ["result"]
    assert p_response.headers["Content-Type"] == "application/json"
    assert "event" not in document and document["seeds"] == [4]
    assert events[-1]["batch"]["requests"] == document["batch"]["requests"] == 2


def test_a_stream_that_fails_ends_with_an_error_event(server):
    # 50 steps at 256 px take ~12 s here; the first (~0.1 s idle, under 1 s with a second CPU-heavy process
    # beside it) stays under the 3 s budget, the whole request far over it.
    body = {"prompt": "x", "num_inference_steps": 50, "width": 256, "height": 256, "timeout_s": 3.0}
    response, events = streamed(server, body)
    assert response.status_code == 200
    assert events[0]["event"] == "progress"
    assert events[-1]["event"] == "error" and events[-1]["code"] == 504
    assert events[-1]["type"] == "TimeBudgetExceeded" and "ran out after step" in events[-1]["message"]
    assert all(e["event"] == "progress" for e in events[:-1])


def test_time_budget_stops_one_request_and_not_its_batch_mates(server):
    (slow, slow_body), (quick, quick_body) = together(
        server,
        [
            (plain, {"prompt": "slow", "num_inference_steps": 50, "timeout_s": 0.3}),
            (plain, {"prompt": "quick", "num_inference_steps": 4, "seed": 5}),
        ],
    )
    assert slow.status_code == 504 and slow_body["error"]["field"] == "timeout_s"
    assert quick.status_code == 200 and quick_body["batch"]["requests"] == 2


def test_accept_header_returns_the_raw_image(server):
    for accept, pil_format in (("image/png", "PNG"), ("image/jpeg", "JPEG"), ("image/webp", "WEBP")):
        response = post(server, {"prompt": "raw", "seed": 8, "width": 96}, headers={"Accept": accept})
        assert response.status_code == 200
        assert response.headers["Content-Type"] == accept
        image = Image.open(io.BytesIO(response.content))
        assert (image.format, image.size) == (pil_format, (96, 64))
        assert response.headers["X-Seed"] == "8"
        assert json.loads(response.headers["X-Parameters"])["width"] == 96


def test_response_format_field_returns_the_raw_image_and_raw_errors_stay_json(server):
    response = post(server, {"prompt": "raw", "seed": 8, "response_format": "image", "output_format": "jpeg"})
    assert response.headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(response.content)).format == "JPEG"
    bad = post(server, {"prompt": "raw", "num_images_per_prompt": 2}, headers={"Accept": "image/png"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "num_images_per_prompt"


def test_cli_generates_with_a_progress_bar(server, tmp_path):
    output = tmp_path / "fox.webp"
    command = [
        sys.executable,
        "-m",
        "sdxl_client",
        "generate",
        "a red fox in snow",
        "--seed",
        "7",
        "--steps",
        "6",
        "-o",
        str(output),
        "--url",
        server.inference_url,
        "--key-file",
        str(server.workdir / "key_file.json"),
        "--previews",
        str(tmp_path / "previews"),
        "--preview-every",
        "3",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "saved" in result.stdout and "seed 7" in result.stdout
    assert "6/6" in result.stderr  # tqdm drew the bar to the last step
    image = Image.open(output)
    assert (image.format, image.size) == ("WEBP", (64, 64))
    assert sorted(p.name for p in (tmp_path / "previews").iterdir()) == ["step-003.jpg"]
    _, direct = plain(
        server, {"prompt": "a red fox in snow", "seed": 7, "num_inference_steps": 6, "output_format": "webp"}
    )
    assert output.read_bytes() == base64.b64decode(direct["images"][0])


def test_cli_exit_codes_and_messages(server, tmp_path):
    base = [
        sys.executable,
        "-m",
        "sdxl_client",
        "generate",
        "x",
        "-o",
        str(tmp_path / "x.png"),
        "--url",
        server.inference_url,
    ]
    bad = subprocess.run(
        [*base, "--width", "100", "--key-file", str(server.workdir / "key_file.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert "`width` must be divisible by 8 but is 100 (field `width`) [HTTP 400 InvalidRequest]" in bad.stderr
    no_key = subprocess.run([*base, "--token", "wrong"], capture_output=True, text=True, timeout=120)
    assert no_key.returncode == 2 and "InvalidKeyException" in no_key.stderr
    assert not (tmp_path / "x.png").exists()
