"""LoRAs per request through a real TorchServe: good ones served, bad names and scales 400s inside a batch."""

from __future__ import annotations

import re

import pytest

from tests.integration.conftest import while_worker_is_busy


@pytest.fixture
def lora_server(options_server):
    return options_server


def predict(server, body):
    return server.predict(body)


def test_bad_lora_choices_are_400s_among_good_lora_requests_in_one_batch(lora_server):
    bodies = [
        {"prompt": "ink", "seed": 1, "loras": [{"name": "ink"}]},
        {"prompt": "x", "loras": [{"name": "sketch"}]},
        {"prompt": "film", "seed": 2, "loras": [{"name": "film", "scale": 1.5}]},
        {"prompt": "x", "loras": [{"name": "ink", "scale": 9}]},
        {"prompt": "x", "loras": [{"path": "https://example.com/x.safetensors"}]},
        {"prompt": "plain", "seed": 3},
    ]
    responses = while_worker_is_busy(lora_server, [(predict, body) for body in bodies])
    assert [r.status_code for r in responses] == [200, 400, 200, 400, 400, 200]
    assert "not in the catalogue; available: film, ink" in responses[1].json()["error"]["message"]
    assert responses[2].json()["parameters"]["loras"] == [{"name": "film", "scale": 1.5}]
    # LoRA and plain requests batched together share one group (one UNet forward per step).
    assert max(r.json()["batch"]["group_requests"] for r in responses if r.status_code == 200) >= 2


def test_lora_loads_hits_and_evictions_reach_prometheus(lora_server):
    from tests.helpers import LORA_SERIES, dashboard_exprs, referenced_metrics, scrape, value

    for name in ("ink", "ink", "film"):  # max_loaded_loras 1: load ink, hit ink, load film and evict ink
        assert lora_server.predict({"prompt": "m", "loras": [{"name": name}]}).status_code == 200
    wanted = [
        r'^sdxl_lora_loads_total\{.*Lora="film"',
        r'^sdxl_lora_cache_hits_total\{.*Lora="ink"',
        r'^sdxl_lora_evictions_total\{.*Lora="ink"',
        r"^sdxl_lora_load_dekaseconds_count",
        r"^sdxl_loras_loaded\{",
    ]
    text = scrape(lora_server, wanted)
    assert value(text, r'^sdxl_lora_loads_total\{.*Lora="film"') >= 1
    assert value(text, r'^sdxl_lora_cache_hits_total\{.*Lora="ink"') >= 1
    assert value(text, r'^sdxl_lora_evictions_total\{.*Lora="ink"') >= 1
    assert value(text, r"^sdxl_lora_load_dekaseconds_count") >= 2
    assert value(text, r"^sdxl_loras_loaded\{") == 1
    queried = {name for expr in dashboard_exprs() for name in referenced_metrics(expr) if name.startswith(LORA_SERIES)}
    assert queried and all(re.search(rf"^{name}\b", text, re.M) for name in queried), queried
