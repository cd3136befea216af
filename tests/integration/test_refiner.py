"""The refiner through a real TorchServe: refined, base-only and bad refiner requests in one batch."""

from __future__ import annotations

import json

from tests.integration.conftest import while_worker_is_busy


def predict(server, body):
    return server.predict(body)


def test_refined_and_base_requests_share_a_batch_and_bad_hand_overs_are_400s_alone(options_server):
    bodies = [
        {"prompt": "refined", "seed": 1, "num_inference_steps": 6, "denoising_end": 0.5},
        {"prompt": "x", "denoising_end": 1.5},
        {"prompt": "plain", "seed": 2, "num_inference_steps": 6},
        {"prompt": "x", "num_inference_steps": 4, "denoising_end": 0.1},
        {"prompt": "x", "aesthetic_score": 3},
        {"prompt": "scored", "seed": 3, "denoising_end": 0.8, "aesthetic_score": 4.5},
    ]
    responses = while_worker_is_busy(options_server, [(predict, body) for body in bodies])
    assert [r.status_code for r in responses] == [200, 400, 200, 400, 400, 200]
    assert [responses[i].json()["error"]["field"] for i in (1, 3, 4)] == ["denoising_end"] * 2 + ["aesthetic_score"]
    assert "leaves 0 of the 4 steps to the base" in responses[3].json()["error"]["message"]
    assert responses[5].json()["parameters"]["aesthetic_score"] == 4.5
    assert responses[0].json()["parameters"]["denoising_end"] == 0.5
    assert max(r.json()["batch"]["group_requests"] for r in responses if r.status_code == 200) >= 2
    assert options_server.predict({"prompt": "after", "denoising_end": 0.5}).status_code == 200


def test_the_cli_asks_for_the_refiner_and_progress_counts_both_stages(options_server, tmp_path, capsys):
    from sdxl_client.cli import main

    key_file = str(options_server.workdir / "key_file.json")
    common = ["--seed", "5", "--steps", "6", "--url", options_server.inference_url, "--key-file", key_file]
    assert main(["generate", "a cat", "--denoising-end", "0.5", *common, "-o", str(tmp_path / "out.png")]) == 0
    assert json.loads(capsys.readouterr().err.strip().splitlines()[-1])["parameters"]["denoising_end"] == 0.5
    streamed = options_server.predict({"prompt": "a", "num_inference_steps": 6, "denoising_end": 0.5, "stream": True})
    progress = [e for e in map(json.loads, streamed.text.splitlines()) if e["event"] == "progress"]
    assert [e["step"] for e in progress] == [1, 2, 3, 4, 5, 6] and {e["total_steps"] for e in progress} == {6}
