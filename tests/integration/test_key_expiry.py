"""Past TorchServe's key expiry: a real TorchServe whose keys expire after one minute (``token_expiration_min=1``;
60 as shipped), the job stack, the healthcheck every probe runs, the client and the drain hook.

Every component that talks to TorchServe renews an expired or rejected key through the management API
(sdxl_client.torchserve_keys); each test shows the timer ran out (the key TorchServe wrote at start is refused)
and that nothing noticed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests

from scripts.torchserve_control import REPO_ROOT
from sdxl_client import SDXLClient
from sdxl_client.torchserve_keys import TorchServeKeys
from tests.integration.conftest import start_server
from tests.integration.jobs_stack import JobStack


@pytest.fixture(scope="module")
def expiring(tmp_path_factory, model_store):
    """Keys valid for 1 minute, and the job stack on it."""
    server = start_server(tmp_path_factory.mktemp("expiring"), model_store, token_expiration_min="1")
    first_keys = server.keys()
    stack = JobStack(tmp_path_factory.mktemp("expiring-jobs"), server).start()
    yield server, stack, first_keys
    stack.stop()
    server.stop()


@pytest.fixture(scope="module")
def fast_expiring(tmp_path_factory, model_store):
    """Keys valid for 15 s (TorchServe takes fractions of a minute), for the tests that wait for one to expire."""
    server = start_server(tmp_path_factory.mktemp("fast-expiring"), model_store, token_expiration_min="0.25")
    yield server
    server.stop()


def healthcheck(server) -> subprocess.CompletedProcess:
    """scripts/healthcheck.sh exactly as the Docker HEALTHCHECK and the Kubernetes probes run it."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "INFERENCE_PORT": str(urlparse(server.inference_url).port),
        "MANAGEMENT_PORT": str(urlparse(server.management_url).port),
    }
    return subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "healthcheck.sh")],
        cwd=server.workdir,  # the key file is found where TorchServe wrote it, as in the pods
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def refused(server, key: str) -> bool:
    answer = requests.get(f"{server.inference_url}/ping", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    return answer.status_code == 400 and "InvalidKeyException" in answer.text


def wait_until_expired(server, api: str = "inference") -> str:
    """The key file's current ``api`` key, once TorchServe refuses it (nothing here renews it meanwhile)."""
    entry = json.loads((server.workdir / "key_file.json").read_text())[api]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if api == "management":
            answer = requests.get(
                f"{server.management_url}/models", headers={"Authorization": f"Bearer {entry['key']}"}, timeout=10
            )
            if answer.status_code == 400:
                return entry["key"]
        elif refused(server, entry["key"]):
            return entry["key"]
        time.sleep(1)
    raise TimeoutError(f"the {api} key {entry} never expired")


def test_jobs_and_the_healthcheck_hold_for_four_minutes_of_expiring_keys(expiring):
    """A job every 10 s for 4 minutes and the healthcheck each time: zero failed jobs, healthy throughout."""
    server, stack, first_keys = expiring
    assert healthcheck(server).returncode == 0
    started = time.monotonic()
    ids, checks = [], []
    for tick in range(24):
        time.sleep(max(0.0, started + 10 * tick - time.monotonic()))  # the cadence itself is the test's subject
        response = stack.submit({"prompt": f"tick {tick}", "seed": tick, "num_inference_steps": 2})
        assert response.status_code == 202, response.text
        ids.append(response.json()["job_id"])
        check = healthcheck(server)
        checks.append((round(time.monotonic() - started), check.returncode, check.stderr.strip()))
    jobs = [stack.wait(job_id, timeout=180) for job_id in ids]
    failed = [(job["job_id"], job["status"], job.get("error")) for job in jobs if job["status"] != "completed"]
    assert not failed, f"{failed}\n{stack.logs()}"
    assert all(job["attempt"] == 1 for job in jobs), [job["attempt"] for job in jobs]
    assert [code for _, code, _ in checks] == [0] * len(checks), checks
    # The timer really ran out, more than once: the key written at start is refused, and keys were renewed.
    assert time.monotonic() - started > 3 * 60
    assert refused(server, first_keys["inference"])
    assert server.keys()["inference"] != first_keys["inference"]


def test_the_client_renews_an_expired_key_and_a_fixed_token_fails_plainly(fast_expiring):
    server = fast_expiring
    expired = wait_until_expired(server)
    image = SDXLClient(
        server.inference_url, key_file=str(server.workdir / "key_file.json"), management_url=server.management_url
    ).generate({"prompt": "after expiry", "seed": 1, "num_inference_steps": 2})
    assert image["seeds"] == [1]
    fresh = server.keys()["inference"]
    assert fresh != expired and not refused(server, fresh)
    # A fixed token cannot be renewed: TorchServe's own rejection reaches the caller, with its type.
    with pytest.raises(Exception, match="InvalidKeyException"):
        SDXLClient(server.inference_url, token=expired, retries=0).generate({"prompt": "x"})


def test_the_key_command_prints_a_valid_key_after_expiry(fast_expiring):
    server = fast_expiring
    expired = wait_until_expired(server)
    printed = subprocess.run(
        [sys.executable, "-m", "sdxl_client.keytool", "key", "--management-url", server.management_url],
        cwd=server.workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert printed.returncode == 0, printed.stderr
    key = printed.stdout.strip()
    assert key and key != expired and not refused(server, key)


def test_two_processes_renewing_at_once_make_one_renewal(fast_expiring):
    """Compare-and-renew under the key file's lock: both were refused with the same key; TorchServe makes one
    new key, the second caller takes it instead of renewing it away from the first."""
    server = fast_expiring
    expired = wait_until_expired(server)
    first = TorchServeKeys(server.workdir / "key_file.json", server.management_url)
    second = TorchServeKeys(server.workdir / "key_file.json", server.management_url)
    assert first.renew(rejected=expired) == second.renew(rejected=expired)
    assert first.renewals + second.renewals == 1


def test_drain_renews_the_expired_management_key_then_stops(expiring):
    """Last in this module: it stops the server."""
    server, _stack, first_keys = expiring
    expired = wait_until_expired(server, "management")
    assert expired == first_keys["management"]  # no component here needed the management key since the start
    drain = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "drain.py"), "--endpoint-grace", "0",
         "--management-url", server.management_url],
        cwd=server.workdir, env=server.env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert drain.returncode == 0 and "all requests answered" in drain.stdout, drain.stdout + drain.stderr
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.inference_url}/ping", timeout=5)
