"""Reliability against a real TorchServe: malformed input at volume, secure defaults, nothing lost."""

from __future__ import annotations

import json
import random
import re
from concurrent.futures import ThreadPoolExecutor

import psutil
import requests

from scripts.torchserve_control import MODEL_NAME, read_properties

JSON = {"Content-Type": "application/json"}


def malformed_requests(count: int, seed: int = 0) -> list[tuple[bytes, dict[str, str]]]:
    """``count`` malformed requests (body, headers), drawn from every family the schema must reject."""
    rng = random.Random(seed)
    invalid = {  # values each field must refuse
        "num_inference_steps": ["20", [], {}, True, None, -1, 0, 10**12, 1.5],
        "guidance_scale": ["7", [], True, None, -1, 31, 1e308],
        "width": ["64", 7, 65, 0, -64, 10**12, 64.0, None],
        "height": ["64", 100, 1e9, False, {}],
        "seed": ["1", -1, 2**32, 2**64, 1.5, True],
        "num_images_per_prompt": [0, 5, "1", None, 1.5],
    }

    def wrong_value():
        field = rng.choice(sorted(invalid))
        return json.dumps({"prompt": "a cat", field: rng.choice(invalid[field])}).encode(), JSON

    families = [
        wrong_value,
        lambda: (b'{"prompt": "a", "guidance_scale": ' + rng.choice([b"NaN", b"Infinity", b"-Infinity"]) + b"}", JSON),
        lambda: (b'{"prompt": "a", "seed": 1e400}', JSON),
        lambda: (json.dumps({"prompt": rng.choice(["", " ", "\n\t", "x" * 2001])}).encode(), JSON),
        lambda: (json.dumps({"prompt": rng.choice([1, None, ["a"], {"t": "a"}, True])}).encode(), JSON),
        lambda: (bytes(rng.randrange(128, 256) for _ in range(rng.randrange(1, 40))), JSON),
        lambda: (rng.choice([b'["a cat"]', b'"a cat"', b"null", b"42", b"true", b"[]"]), JSON),
        lambda: (
            b'{"prompt": "a"}',
            {"Content-Type": rng.choice(["application/x-www-form-urlencoded", "multipart/form-data; boundary=x"])},
        ),
        lambda: (b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(30)), {"Content-Type": "image/png"}),
        lambda: (
            json.dumps({"prompt": "a", rng.choice(["steps", "cfg", "sampler_name", "Prompt", ""]): 1}).encode(),
            JSON,
        ),
        lambda: (b'{"prompt": "a", "prompt": "b"}', JSON),
        lambda: (b"[" * rng.randrange(2_000, 50_000) + b"]", JSON),
        lambda: (b'{"prompt": "a", "width": 64', JSON),
        lambda: (b"", JSON),
        lambda: (json.dumps({"prompt": "a", "stream": "yes", "response_format": "image"}).encode(), JSON),
        lambda: (json.dumps({"prompt": "a", "num_images_per_prompt": 2}).encode(), {**JSON, "Accept": "image/png"}),
    ]
    return [rng.choice(families)() for _ in range(count)]


def test_hundreds_of_malformed_requests_get_4xx_json_and_the_worker_survives(server):
    url = f"{server.inference_url}/predictions/{MODEL_NAME}"
    pids_before = server.worker_pids()
    cases = malformed_requests(320)

    def send(case):
        body, headers = case
        return requests.post(url, data=body, headers={**server.headers(), **headers}, timeout=120)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(send, cases))
    problems = []
    for (body, headers), response in zip(cases, responses, strict=True):
        try:
            document = response.json()
        except ValueError:
            document = None
        message = (document or {}).get("error", document or {}).get("message") if isinstance(document, dict) else None
        if not (400 <= response.status_code < 500 and message):
            problems.append((response.status_code, body[:60], headers, response.text[:200]))
    assert not problems, f"{len(problems)} of {len(cases)} not a 4xx with a JSON message: {problems[:5]}"
    assert server.worker_pids() == pids_before
    good = server.predict({"prompt": "still fine", "seed": 1})
    assert good.status_code == 200 and good.json()["seeds"] == [1]


def test_request_body_over_the_size_limit_is_a_4xx(server):
    huge = json.dumps({"prompt": "x" * 34_000_000}).encode()  # max_request_size is 32 MiB (image inputs)
    response = requests.post(
        f"{server.inference_url}/predictions/{MODEL_NAME}", data=huge, headers={**server.headers(), **JSON}, timeout=60
    )
    assert response.status_code == 413


def test_servers_listen_on_loopback_only(server):
    java = next(
        p
        for p in psutil.process_iter(["name", "cwd"])
        if p.info["name"] == "java" and p.info["cwd"] == str(server.workdir)
    )
    listening = {c.laddr for c in java.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
    ports = {int(url.rsplit(":", 1)[1]) for url in (server.inference_url, server.management_url, server.metrics_url)}
    assert {addr.port for addr in listening} >= ports
    # Java reports IPv4 loopback as the IPv4-mapped IPv6 address ::ffff:127.0.0.1.
    bound = {addr.ip.removeprefix("::ffff:") for addr in listening if addr.port in ports}
    assert bound == {"127.0.0.1"}


def test_model_registration_is_off_and_archives_come_only_from_the_model_store(server):
    response = requests.post(
        f"{server.management_url}/models",
        params={"url": "https://example.com/x.mar"},
        headers=server.headers("management"),
        timeout=30,
    )
    assert response.status_code == 405
    properties = read_properties(server.config)
    assert properties["enable_model_api"] == "false"
    assert properties["allowed_urls"] == "file://.*model_store.*"


def test_prompts_are_not_logged_at_info(server):
    secret = "zebra-unicorn-" + "".join(random.Random(7).choices("abcdefghij", k=12))
    assert server.predict({"prompt": f"a portrait of {secret}", "seed": 3}).status_code == 200
    assert server.predict({"prompt": f"{secret} again", "width": 3}).status_code == 400
    logs = "\n".join(p.read_text(errors="replace") for p in (server.workdir / "logs").glob("*.log"))
    assert "row(s)" in logs  # the handler does log each call at INFO
    assert not re.search(secret, logs), "a prompt reached the logs"
