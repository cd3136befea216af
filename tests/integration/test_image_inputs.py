"""img2img and inpainting through a real TorchServe: bad images are 4xx for their request alone, in both modes."""

from __future__ import annotations

import base64
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from tests.images import b64, half_mask, malformed_image_bodies, picture

IMAGE, MASK = b64(picture(64, 64)), b64(half_mask(64, 64))
GOOD = [
    {"prompt": "img2img", "seed": 21, "image": IMAGE, "strength": 0.75},
    {"prompt": "inpaint", "seed": 22, "image": IMAGE, "mask_image": MASK},
    {"prompt": "text", "seed": 23},
]


def image_of(response) -> np.ndarray:
    document = response.json()
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(document["images"][0]))), dtype=np.int16)


def test_malformed_images_are_400s_naming_the_field_among_good_requests_and_the_worker_lives(server):
    cases = malformed_image_bodies()
    # Over max_image_bytes (10 MiB) but inside TorchServe's max_request_size (32 MiB): the handler's own 400.
    oversized = base64.b64encode(os.urandom(11 * 2**20)).decode()
    cases.append(("11 MiB of base64", {"prompt": "a", "image": oversized}, "image"))
    pids = server.worker_pids()
    bodies = [body for _, body, _ in cases] + GOOD * 3
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(server.predict, bodies))

    problems = []
    for (what, _, field), response in zip(cases, responses, strict=False):
        error = response.json().get("error", {})
        if response.status_code != 400 or error.get("field") != field or f"`{field}`" not in error.get("message", ""):
            problems.append((what, response.status_code, response.text[:200]))
    assert not problems, problems
    good = responses[len(cases) :]
    assert [r.status_code for r in good] == [200] * len(good)
    for first, again in zip(good[:3], good[3:6], strict=True):  # the same request, other batch-mates
        assert np.abs(image_of(first) - image_of(again)).max() <= 1
    record = good[0].json()["parameters"]["image"]
    assert set(record) == {"sha256", "format", "bytes", "width", "height"} and record["format"] == "png"
    assert server.worker_pids() == pids


def test_image_requests_joining_a_continuous_loop_match_static_batching(server, continuous_server):
    static = [server.predict(body) for body in GOOD]
    with ThreadPoolExecutor(4) as pool:
        long = pool.submit(continuous_server.predict, {"prompt": "long", "seed": 1, "num_inference_steps": 30})
        joined = list(pool.map(continuous_server.predict, [{**body, "stream": True} for body in GOOD]))
        assert long.result().status_code == 200

    for before, response in zip(static, joined, strict=True):
        events = [json.loads(line) for line in response.text.splitlines()]
        result = events[-1]
        assert response.status_code == 200 and result["event"] == "result", events[-1]
        assert result["batch"]["scheduling"] == "continuous"
        ours = np.asarray(Image.open(io.BytesIO(base64.b64decode(result["images"][0]))), dtype=np.int16)
        assert np.abs(ours - image_of(before)).max() <= 1
    progress = [event for event in map(json.loads, joined[0].text.splitlines()) if event["event"] == "progress"]
    assert progress[0]["total_steps"] == 3  # img2img at strength 0.75 of 4 steps


def test_the_cli_sends_an_image_and_a_mask_and_saves_the_result(server, tmp_path, capsys):
    from sdxl_client.cli import main

    picture(64, 64).save(tmp_path / "in.png")
    half_mask(64, 64).save(tmp_path / "mask.png")
    key_file = str(server.workdir / "key_file.json")
    common = ["--seed", "5", "--url", server.inference_url, "--key-file", key_file]
    arguments = ["a red hat", "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"), *common]
    assert main(["generate", *arguments, "--strength", "0.75", "-o", str(tmp_path / "out.png")]) == 0
    record = json.loads(capsys.readouterr().err.strip().splitlines()[-1])["parameters"]
    assert record["strength"] == 0.75 and record["mask_image"]["width"] == 64
    assert Image.open(tmp_path / "out.png").size == (64, 64)
    # A bad strength is the server's 400 naming the field; the CLI exits 2 and says so.
    assert main(["generate", *arguments, "--strength", "0.1", "--no-progress", "-o", str(tmp_path / "x.png")]) == 2
    assert "`strength` 0.1 x `num_inference_steps` 4" in capsys.readouterr().err
