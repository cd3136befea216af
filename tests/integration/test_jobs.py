"""The async job API against a real Redis and a real TorchServe (tiny model): gateway and dispatchers as
processes, started and stopped here."""

from __future__ import annotations

import base64
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.images import max_pixel_difference
from tests.integration.conftest import start_server
from tests.integration.jobs_stack import JobStack, requests_answered


@pytest.fixture(scope="module")
def stack(tmp_path_factory, server):
    stack = JobStack(tmp_path_factory.mktemp("jobs"), server).start()
    yield stack
    stack.stop()


def test_a_job_streams_its_progress_and_its_image_equals_the_synchronous_one(stack, server):
    body = {"prompt": "a lighthouse at dawn", "seed": 7, "num_inference_steps": 4}
    response = stack.submit(body)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["Location"] == f"/jobs/{job['job_id']}"
    assert job["status"] == "pending" and job["total_steps"] == 4
    events = stack.events(job["job_id"])
    statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
    assert statuses == ["pending", "processing", "completed"], events
    steps = [e["data"]["step"] for e in events if e["event"] == "progress"]
    assert steps == [1, 2, 3, 4]
    finished = stack.job(job["job_id"])
    assert finished["status"] == "completed" and finished["seed"] == 7 and finished["attempt"] == 1
    assert finished["progress"] == 1.0 and finished["parameters"]["prompt"] == body["prompt"]
    image = stack.image(job["job_id"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    direct = server.predict(body).json()
    assert image.content == base64.b64decode(direct["images"][0])


@pytest.fixture(scope="module")
def idle(tmp_path_factory, server):
    """A stack whose dispatcher is started by the test that needs one: jobs stay pending until then."""
    stack = JobStack(tmp_path_factory.mktemp("idle"), server).start(dispatchers=0)
    yield stack
    stack.stop()


def test_positions_and_estimates_fall_as_the_jobs_ahead_run(stack):
    stack.wait(stack.submit({"prompt": "warm", "seed": 1}).json()["job_id"])  # a throughput to estimate from
    ids = [
        stack.submit({"prompt": f"queued {i}", "seed": i, "num_inference_steps": 12}).json()["job_id"]
        for i in range(12)
    ]
    last, seen = ids[-1], []
    while (job := stack.job(last))["status"] == "pending":
        seen.append((job["queue_position"], job["estimated_time"]))
        time.sleep(0.05)
    positions = [p for p, _ in seen if p is not None]
    estimates = [e for _, e in seen if e is not None]
    assert positions and positions == sorted(positions, reverse=True) and positions[0] > positions[-1], seen
    assert estimates and estimates[-1] < estimates[0], seen
    assert all(stack.wait(i)["status"] == "completed" for i in ids)


def test_a_pending_job_canceled_never_reaches_torchserve(tmp_path, model_store):
    """On a TorchServe of its own, so its request counter counts this test's jobs alone (a shared server's
    counter still takes the previous test's last batch in: TorchServe's metrics lag its responses)."""
    (tmp_path / "torchserve").mkdir()
    server = start_server(tmp_path / "torchserve", model_store)
    idle = JobStack(tmp_path / "jobs", server).start(dispatchers=0)
    try:
        canceled = idle.submit({"prompt": "never run", "seed": 3}).json()["job_id"]
        response = requests.delete(f"{idle.gateway.url}/jobs/{canceled}", headers=idle.headers(), timeout=10)
        assert response.status_code == 200 and response.json()["status"] == "canceled"
        assert idle.depth() == (0, 0)
        again = requests.delete(f"{idle.gateway.url}/jobs/{canceled}", headers=idle.headers(), timeout=10)
        assert again.status_code == 409 and "already canceled" in again.json()["error"]["message"]
        idle.add_dispatcher()
        ran = idle.submit({"prompt": "runs", "seed": 4}).json()["job_id"]
        assert idle.wait(ran)["status"] == "completed"
        assert idle.job(canceled)["status"] == "canceled" and idle.image(canceled).status_code == 409
        # Queued first, the canceled job would have reached TorchServe (and its counter) before the one that ran.
        assert requests_answered(server, at_least=1) == 1, "only the job that was not canceled reached TorchServe"
    finally:
        idle.stop()
        server.stop()


def test_twenty_concurrent_submits_with_one_idempotency_key_make_one_job(idle):
    body = {"prompt": "once", "seed": 11}
    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda _: idle.submit(body, headers={"Idempotency-Key": "order-42"}), range(20)))
    assert sorted(r.status_code for r in responses) == [200] * 19 + [202]
    assert len({r.json()["job_id"] for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 19
    other_body = idle.submit({**body, "seed": 12}, headers={"Idempotency-Key": "order-42"})
    assert other_body.status_code == 409 and "another request body" in other_body.json()["error"]["message"]
    # keys are per API key: the other key's "order-42" is its own job
    theirs = idle.submit(body, key="other", headers={"Idempotency-Key": "order-42"})
    assert theirs.status_code == 202 and theirs.json()["job_id"] != responses[0].json()["job_id"]
    job_id = responses[0].json()["job_id"]
    for method in ("get", "delete"):
        response = requests.request(method, f"{idle.gateway.url}/jobs/{job_id}", headers=idle.headers("other"))
        assert response.status_code == 404 and response.json()["error"]["message"] == f"no job {job_id!r}"
    assert idle.image(job_id, key="other").status_code == 404
    assert requests.get(f"{idle.gateway.url}/jobs/{job_id}/events", headers=idle.headers("other")).status_code == 404
    for job in (job_id, theirs.json()["job_id"]):
        owner = "default" if job == job_id else "other"
        requests.delete(f"{idle.gateway.url}/jobs/{job}", headers=idle.headers(owner), timeout=10)


def malformed_submits(stack) -> list[tuple[str, dict | None, bytes]]:
    """(why, headers, body) of submits that must each get a 4xx and queue nothing."""
    good = {"prompt": "ok"}
    cases: list[tuple[str, dict | None, bytes]] = []

    def add(why, body, headers=None):
        cases.append((why, headers, body if isinstance(body, bytes) else json.dumps(body).encode()))

    for value in ("", None, 3, [], {"text": "x"}):
        add(f"prompt {value!r}", {"prompt": value})
    add("no prompt", {"negative_prompt": "x"})
    for name, values in {
        "num_inference_steps": [0, -1, 51, 2.5, "4", True, None, 10**30],
        "guidance_scale": [-1, "high", float("inf") if False else 1e9, [], {}],
        "width": [65, 0, -64, 8, 4096, "64", 64.5],
        "height": [65, 0, 1, 100000, "x"],
        "seed": [-1, 2**64, "7", 1.5, [1]],
        "num_images_per_prompt": [0, 9, "1", -2],
        "sampler": ["nope", 3, ""],
        "strength": [0.5],
        "loras": [[{"name": "missing"}], "ink", [{"scale": 1}]],
        "output_format": ["gif", 1],
        "timeout_s": [-1, "soon", 0],
        "preview_every": [-1, 101, "2"],
        "negative_prompt": [3, ["x"]],
        "eta": [-1, "x"],
        "schedule": ["sideways"],
        "denoising_end": [0.5],
        "aspect_ratio": ["7:3:1", 2],
        "original_size": [[1], "big"],
        "crops_coords_top_left": ["x"],
    }.items():
        for value in values:
            add(f"{name}={value!r}", {**good, name: value})
    for name in ("stream", "response_format"):
        add(f"transport field {name}", {**good, name: True if name == "stream" else "image"})
    for name in ("steps", "prompts", "webhook_url", "callback"):
        add(f"unknown field {name}", {**good, name: 1})
    for url in (
        "ftp://127.0.0.1/x",
        "http://169.254.169.254/latest",
        "https://evil.example/x",
        "not a url",
        3,
        "https://user:pw@127.0.0.1/x",
        "https://" + "a" * 2100,
    ):
        add(f"webhook {url!r}"[:60], {**good, "webhook": url})
    for metadata in ("x", [1], {"blob": "x" * 5000}):
        add(f"metadata {str(metadata)[:20]}", {**good, "metadata": metadata})
    for raw in (
        b"",
        b"{",
        b"[]",
        b'"prompt"',
        b"null",
        b'{"prompt": "a", "prompt": "b"}',
        b'{"prompt": NaN}',
        b"\xff\xfe",
        b'{"prompt": "x"} trailing',
        b"{" * 5000,
    ):
        add(f"body {raw[:20]!r}", raw)
    add("image not base64", {**good, "image": "%%%"})
    add("image gif", {**good, "image": base64.b64encode(b"GIF89a" + b"\0" * 20).decode()})
    add("mask without image", {**good, "mask_image": "aGVsbG8="})
    add("form content type", {**good}, {"Content-Type": "application/x-www-form-urlencoded"})
    add("text content type", {**good}, {"Content-Type": "text/plain"})
    add("no key", good, {"Authorization": ""})
    add("wrong key", good, {"Authorization": "Bearer wrong-key-0123456789"})
    add("basic auth", good, {"Authorization": "Basic dXNlcjpwdw=="})
    add("prefer wait 0", good, {"Prefer": "wait=0"})
    add("prefer wait 61", good, {"Prefer": "wait=61"})
    add("prefer wait x", good, {"Prefer": "wait=soon"})
    add("idempotency key empty", good, {"Idempotency-Key": ""})
    add("idempotency key long", good, {"Idempotency-Key": "k" * 300})
    add("over the body limit", b'{"prompt": "' + b"x" * (33 * 2**20) + b'"}')
    return cases


def test_malformed_submits_are_4xx_naming_the_problem_and_nothing_is_queued(idle):
    submitted_before = re.search(r"^sdxl_jobs_submitted_total (\d+)", idle.metrics(), re.M).group(1)
    depth_before = idle.depth()
    cases = malformed_submits(idle)
    assert len(cases) >= 100
    for why, headers, body in cases:
        response = idle.submit(body, headers=headers)
        assert 400 <= response.status_code < 500, (why, response.status_code, response.text[:200])
        error = response.json()["error"]
        assert error["message"] and error["code"] == response.status_code, why
    assert idle.depth() == depth_before
    assert re.search(r"^sdxl_jobs_submitted_total (\d+)", idle.metrics(), re.M).group(1) == submitted_before
    named = idle.submit({"prompt": "x", "width": 65}).json()["error"]
    assert named == {
        "code": 400,
        "type": "InvalidRequest",
        "message": "`width` must be divisible by 8 but is 65",
        "field": "width",
        "value": 65,
    }
    assert requests.get(f"{idle.gateway.url}/healthz", timeout=5).json() == {"status": "ok"}


class Receiver:
    """A webhook receiver on 127.0.0.1: answers each POST with the next status of ``answers`` (then 200)."""

    def __init__(self, answers: list[int]):
        import http.server
        import threading

        self.answers, self.calls = list(answers), []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(status)
                if status in (301, 302, 307, 308):
                    self.send_header("Location", f"http://127.0.0.1:{self.server.server_port}/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_calls(self, count: int, timeout: float = 60) -> list:
        deadline = time.monotonic() + timeout
        while len(self.calls) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.calls

    def close(self):
        self.server.shutdown()


WEBHOOK_SECRET = "whsec-test-0123456789abcdef"


@pytest.fixture(scope="module")
def hooked(tmp_path_factory, server):
    """A stack whose webhooks may call 127.0.0.1 over http, retried quickly; results kept 4 s."""
    settings = {
        "webhook_allowed_hosts": ["127.0.0.1"],
        "webhook_allow_http": True,
        "webhook_secret": WEBHOOK_SECRET,
        "webhook_retry_delay_s": 0.3,
        "result_ttl_s": 4,
        "public_url": "https://jobs.example",
    }
    stack = JobStack(tmp_path_factory.mktemp("hooked"), server, settings=settings).start()
    yield stack
    stack.stop()


def test_a_webhook_is_delivered_after_two_failed_attempts_with_one_delivery_id(hooked):
    from jobs.webhooks import verify

    receiver = Receiver([500, 503])
    try:
        job_id = hooked.submit(
            {"prompt": "hooked", "seed": 5, "webhook": receiver.url, "metadata": {"order": 42}}
        ).json()["job_id"]
        calls = receiver.wait_calls(3)
        assert len(calls) == 3, hooked.logs()
        time.sleep(1.5)
        assert len(receiver.calls) == 3, "delivered once it got a 2xx, never again"
    finally:
        receiver.close()
    ids = {headers["webhook-id"] for _, headers, _ in calls}
    assert ids == {f"whd_{job_id}_completed"}
    for _, headers, body in calls:
        assert verify(WEBHOOK_SECRET, headers, body)
        assert not verify("another-secret-0123456789", headers, body)
    document = json.loads(calls[-1][2])
    assert document["type"] == "job.completed" and document["id"] == f"whd_{job_id}_completed"
    job = document["data"]
    assert job["status"] == "completed" and job["metadata"] == {"order": 42} and job["seed"] == 5
    assert job["image_url"] == f"https://jobs.example/jobs/{job_id}/image"
    assert re.search(r'^sdxl_jobs_webhook_deliveries_total\{result="failed"\} 2$', hooked.metrics(), re.M)


def test_a_webhook_redirect_is_a_failed_attempt_and_is_not_followed(hooked):
    receiver = Receiver([302, 302, 302, 302, 302])
    try:
        job_id = hooked.submit({"prompt": "redirected", "webhook": receiver.url}).json()["job_id"]
        assert hooked.wait(job_id)["status"] == "completed"
        calls = receiver.wait_calls(5)
    finally:
        receiver.close()
    assert [path for path, _, _ in calls] == ["/hook"] * 5, "the Location was never called"


def test_a_finished_job_expires_after_the_result_ttl(hooked):
    job_id = hooked.submit({"prompt": "short-lived"}).json()["job_id"]
    assert hooked.wait(job_id)["status"] == "completed"
    assert hooked.image(job_id).status_code == 200
    deadline = time.monotonic() + 60  # past result_ttl_s (4 s here), however loaded the machine
    while (job := hooked.job(job_id))["status"] != "expired" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job["status"] == "expired" and job["image_url"] is None and job["error"]["code"] == 410
    image = hooked.image(job_id)
    assert image.status_code == 410 and "expired" in image.json()["error"]["message"]


def test_prefer_wait_answers_with_the_finished_job(stack):
    response = stack.submit({"prompt": "waited for", "seed": 9}, headers={"Prefer": "wait=30"})
    assert response.status_code == 200 and response.headers["Preference-Applied"] == "wait=30"
    assert response.json()["status"] == "completed" and response.json()["image_url"].endswith("/image")
    # 50 steps at 128 px: seconds on any CPU, far past the 0.2 s it may wait; it must end before the next test.
    slow = stack.submit(
        {"prompt": "too slow", "num_inference_steps": 50, "width": 128, "height": 128}, headers={"Prefer": "wait=0.2"}
    )
    assert slow.status_code == 202 and slow.json()["status"] in ("pending", "processing")
    assert stack.wait(slow.json()["job_id"], timeout=600)["status"] == "completed"


def test_every_accepted_job_completes_across_a_redis_crash_and_restart(stack, server):
    bodies = [{"prompt": f"durable {i}", "seed": 100 + i, "num_inference_steps": 8} for i in range(8)]
    ids = [stack.submit(body).json()["job_id"] for body in bodies]
    stack.redis.kill()  # SIGKILL: only the append-only file survives
    time.sleep(2)
    stack.redis.start()
    jobs = [stack.wait(job_id, timeout=180) for job_id in ids]
    assert [job["status"] for job in jobs] == ["completed"] * len(ids), stack.logs()
    for body, job_id in zip(bodies[:2], ids[:2], strict=True):  # batched differently than alone: equal within 1/255
        direct = base64.b64decode(server.predict(body).json()["images"][0])
        assert max_pixel_difference(stack.image(job_id).content, direct) <= 1


def test_events_resume_after_last_event_id_and_the_websocket_carries_the_same_log(stack):
    from websockets.sync.client import connect

    job_id = stack.submit({"prompt": "followed", "num_inference_steps": 5}).json()["job_id"]
    events = stack.events(job_id)
    resumed = stack.events(job_id, headers={"Last-Event-ID": events[2]["id"]})
    assert resumed == events[3:]
    url = stack.gateway.url.replace("http://", "ws://") + f"/ws/jobs/{job_id}"
    with connect(url) as socket:  # a browser cannot set headers: the key comes as the first message
        socket.send(json.dumps({"authorization": f"Bearer {stack.key()}"}))
        messages = [json.loads(message) for message in socket]
    assert [(m["id"], m["event"], m["data"]) for m in messages] == [(e["id"], e["event"], e["data"]) for e in events]
    with connect(url, additional_headers=stack.headers("other")) as socket:
        refused = json.loads(socket.recv())
    assert refused["error"]["code"] == 404
    bad = requests.get(f"{stack.gateway.url}/jobs/{job_id}/events", headers=stack.headers(**{"Last-Event-ID": "x"}))
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "Last-Event-ID"


def test_the_cli_submits_waits_fetches_and_cancels(stack, tmp_path, capsys):
    from sdxl_client.cli import main

    gateway = ["--jobs-url", stack.gateway.url, "--api-key", stack.key()]
    assert main(["submit", "a cli job", "--seed", "8", "--steps", "3", *gateway]) == 0
    job_id = capsys.readouterr().out.strip()
    assert job_id.startswith("job_")
    assert main(["wait", job_id, "-o", str(tmp_path / "waited.png"), *gateway]) == 0
    assert main(["fetch", job_id, "-o", str(tmp_path / "fetched.png"), *gateway]) == 0
    assert (
        (tmp_path / "waited.png").read_bytes() == (tmp_path / "fetched.png").read_bytes() == stack.image(job_id).content
    )
    capsys.readouterr()
    assert main(["status", job_id, *gateway]) == 0
    assert json.loads(capsys.readouterr().out)["seed"] == 8
    assert main(["cancel", job_id, *gateway]) == 2  # finished: 409
    assert "already completed" in capsys.readouterr().err
    assert main(["submit", "bad", "--width", "65", *gateway]) == 2
    assert "`width` must be divisible by 8 but is 65 (field `width`)" in capsys.readouterr().err


def test_caps_per_key_and_overall_answer_429_with_retry_after(tmp_path, server):
    stack = JobStack(tmp_path, server, settings={"max_open_per_key": 2, "max_queued": 3}).start(dispatchers=0)
    try:
        assert [stack.submit({"prompt": f"mine {i}"}).status_code for i in range(2)] == [202, 202]
        mine = stack.submit({"prompt": "one too many"})
        assert mine.status_code == 429 and mine.headers["Retry-After"] == "10"
        assert mine.json()["error"]["type"] == "TooManyJobs"
        assert stack.submit({"prompt": "theirs"}, key="other").status_code == 202
        full = stack.submit({"prompt": "queue full"}, key="other")
        assert full.status_code == 429 and full.json()["error"]["type"] == "QueueFull" and full.headers["Retry-After"]
        assert stack.depth() == (3, 0)
        first = stack.submit({"prompt": "x"}, headers={"Idempotency-Key": "k1"})
        assert first.status_code == 429  # refused submits do not hold their idempotency key
        job_id = requests.get(f"{stack.gateway.url}/jobs", headers=stack.headers(), timeout=10).json()["jobs"][0][
            "job_id"
        ]
        requests.delete(f"{stack.gateway.url}/jobs/{job_id}", headers=stack.headers(), timeout=10)
        assert stack.submit({"prompt": "x"}, headers={"Idempotency-Key": "k1"}).status_code == 202
    finally:
        stack.stop()
