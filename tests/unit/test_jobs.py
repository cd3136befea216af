"""The job API's pieces that need no server: settings, webhook checks and signatures, the job view, the result
folder, and the Kubernetes objects that run it."""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest
import yaml

from handler.contract.errors import ConfigError, InvalidRequest
from jobs import webhooks
from jobs.results import FilesystemStore
from jobs.routers.submit import _prefer_wait
from jobs.settings import JobSettings
from jobs.views import job_view
from scripts.torchserve_control import REPO_ROOT, tool

JOBS_K8S = REPO_ROOT / "deploy" / "kubernetes" / "jobs"


def test_settings_come_from_the_yaml_then_the_environment():
    settings = JobSettings.load(
        REPO_ROOT / "config" / "jobs.yaml",
        environ={
            "SDXL_JOBS_REDIS_URL": "redis://redis:6379/1",
            "SDXL_JOBS_AUTH": "false",
            "SDXL_JOBS_MAX_QUEUED": "5",
            "SDXL_JOBS_WEBHOOK_ALLOWED_HOSTS": "hooks.example, Other.Example",
            "SDXL_JOBS_WEBHOOK_SECRET": "s" * 20,
        },
    )
    assert settings.redis_url == "redis://redis:6379/1" and settings.auth is False and settings.max_queued == 5
    assert settings.webhook_allowed_hosts == ("hooks.example", "other.example")
    assert settings.model_yaml == "config/tiny-sdxl.yaml" and settings.result_ttl_s == 3600


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"redis": "x"}, "unknown job setting(s) redis"),
        ({"result_store": "gcs"}, "result_store must be one of filesystem, s3 but is 'gcs'"),
        ({"result_store": "s3"}, "result_store s3 needs s3_bucket"),
        ({"webhook_allowed_hosts": ["a.example"]}, "webhook_secret is not"),
        ({"max_wait_s": 0}, "max_wait_s must be in 1..600 but is 0"),
        ({"attempts": 0}, "attempts must be a positive integer but is 0"),
    ],
)
def test_wrong_settings_fail_at_startup_naming_the_setting(tmp_path, values, message):
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        JobSettings.load(path, environ={})


def hooks(**changes) -> JobSettings:
    return JobSettings(webhook_allowed_hosts=("hooks.example",), webhook_secret="s" * 20, **changes)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://hooks.example/x", "must be an https URL"),
        ("https://evil.example/x", "host 'evil.example' is not allowed; allowed hosts: hooks.example"),
        ("https://169.254.169.254/latest/meta-data", "is not allowed"),
        ("https://user:pw@hooks.example/x", "may not carry credentials"),
        ("file:///etc/passwd", "must be an https URL"),
        (42, "must be a URL string"),
    ],
)
def test_webhook_urls_outside_the_allow_list_are_refused(url, message):
    with pytest.raises(InvalidRequest, match=message) as raised:
        webhooks.check_webhook(url, hooks())
    assert raised.value.field == "webhook"


def test_webhooks_are_off_unless_hosts_are_allowed():
    with pytest.raises(InvalidRequest, match=r"allowed hosts: none \(webhooks are off on this server\)"):
        webhooks.check_webhook("https://hooks.example/x", JobSettings())
    assert webhooks.check_webhook("https://HOOKS.example/x", hooks()) == "https://HOOKS.example/x"
    assert webhooks.check_webhook("http://hooks.example/x", hooks(webhook_allow_http=True))


def test_a_signature_verifies_only_for_its_secret_body_and_a_fresh_timestamp():
    body, now = b'{"id":"whd_1"}', int(time.time())
    headers = {
        "webhook-id": "whd_1",
        "webhook-timestamp": str(now),
        "webhook-signature": webhooks.sign("secret-1", "whd_1", now, body),
    }
    assert webhooks.verify("secret-1", headers, body)
    assert not webhooks.verify("secret-2", headers, body)
    assert not webhooks.verify("secret-1", headers, body + b" ")
    assert not webhooks.verify("secret-1", {**headers, "webhook-id": "whd_2"}, body)
    stale = {
        **headers,
        "webhook-timestamp": str(now - 3600),
        "webhook-signature": webhooks.sign("secret-1", "whd_1", now - 3600, body),
    }
    assert not webhooks.verify("secret-1", stale, body)


def record(**fields) -> dict[str, str]:
    return {"id": "job_x", "owner": "a", "status": "pending", "created_at": "1700000000.0", "attempt": "0", **fields}


def test_the_view_of_a_job_through_its_life():
    pending = job_view(
        record(total_steps="4"), base_url="http://g", result_ttl_s=60, queue_position=3, estimated_time=12.3456
    )
    assert pending["queue_position"] == 3 and pending["estimated_time"] == 12.346 and pending["image_url"] is None
    assert pending["created_at"] == "2023-11-14T22:13:20.000Z"
    running = job_view(
        record(status="processing", step="1", total_steps="4", eta_s="1.5"),
        base_url="http://g",
        result_ttl_s=60,
        queue_position=None,
    )
    assert running["progress"] == 0.25 and running["estimated_time"] == 1.5 and running["queue_position"] is None
    done = record(
        status="completed",
        step="4",
        total_steps="4",
        images='["job_x/0.png"]',
        seeds="[7]",
        finished_at=str(time.time()),
    )
    view = job_view(done, base_url="http://g", result_ttl_s=60)
    assert view["image_url"] == "http://g/jobs/job_x/image" and view["seed"] == 7 and view["progress"] == 1.0
    expired = job_view({**done, "finished_at": str(time.time() - 61)}, base_url="http://g", result_ttl_s=60)
    assert expired["status"] == "expired" and expired["image_url"] is None and expired["error"]["code"] == 410


@pytest.mark.parametrize(
    ("header", "seconds"), [(None, 0.0), ("respond-async", 0.0), ("wait=5", 5.0), ("respond-async, wait=2.5", 2.5)]
)
def test_prefer_wait_is_read_from_the_header(header, seconds):
    assert _prefer_wait(header, 60) == seconds


@pytest.mark.parametrize("header", ["wait=0", "wait=61", "wait=soon", "wait=-1"])
def test_a_wrong_prefer_wait_is_a_400(header):
    with pytest.raises(InvalidRequest, match="Prefer") as raised:
        _prefer_wait(header, 60)
    assert raised.value.field == "Prefer"


def test_the_result_folder_stays_inside_itself_and_sweeps_old_results(tmp_path):
    async def check():
        store = FilesystemStore(tmp_path / "results")
        await store.put("job_a/0.png", b"png", "image/png")
        assert await store.get("job_a/0.png") == b"png" and await store.get("job_b/0.png") is None
        with pytest.raises(ValueError, match="leaves the results folder"):
            await store.get("../../etc/passwd")
        assert await store.sweep(older_than_s=3600) == 0
        assert await store.sweep(older_than_s=-1) == 1 and not (tmp_path / "results" / "job_a").exists()

    asyncio.run(check())


def test_the_job_manifests_validate_against_the_schemas():
    files = sorted(p.name for p in JOBS_K8S.glob("*.yaml") if p.name != "keda-scaledobject.yaml")
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", *files], cwd=JOBS_K8S, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") >= len(files)


def test_the_job_manifests_agree_with_the_settings_and_the_model():
    config = yaml.safe_load((JOBS_K8S / "configmap.yaml").read_text())["data"]["jobs.yaml"]
    settings = JobSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in yaml.safe_load(config).items()})
    settings.check()
    model = yaml.safe_load((REPO_ROOT / "config" / "sdxl-base.yaml").read_text())
    workers = yaml.safe_load((JOBS_K8S / "workers.yaml").read_text())
    pod = workers["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    assert "jobs.dispatcher" in containers["dispatcher"]["command"]
    # the dispatcher reads the key file TorchServe writes in its working directory
    assert settings.torchserve_key_file == containers["torchserve"]["workingDir"] + "/key_file.json"
    assert pod["terminationGracePeriodSeconds"] > settings.drain_grace_s + 15
    keda = yaml.safe_load((JOBS_K8S / "keda-scaledobject.yaml").read_text())
    assert keda["spec"]["scaleTargetRef"]["name"] == workers["metadata"]["name"]
    lists = {t["metadata"]["listName"]: int(t["metadata"]["listLength"]) for t in keda["spec"]["triggers"]}
    per_pod = model["batchSize"] * model["maxWorkers"]
    assert lists == {f"saq:{settings.queue_name}:queued": per_pod, f"saq:{settings.queue_name}:active": per_pod}
    gateway = yaml.safe_load_all((JOBS_K8S / "gateway.yaml").read_text())
    assert "jobs.gateway" in next(gateway)["spec"]["template"]["spec"]["containers"][0]["command"]


def test_the_openapi_document_shows_the_request_schema_from_the_field_table(tmp_path):
    from fastapi.testclient import TestClient

    from handler.contract.fields import FIELD_NAMES as FIELDS
    from jobs.gateway import create_app
    from jobs.routers.submit import JOB_FIELDS, TRANSPORT_FIELDS

    settings = JobSettings(api_keys_file=str(tmp_path / "keys.json"), results_dir=str(tmp_path / "results"))
    with TestClient(create_app(settings)) as client:
        document = client.get("/openapi.json").json()
        assert client.get("/docs").status_code == 200
    body = document["paths"]["/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    drawn = set(FIELDS) - set(TRANSPORT_FIELDS) - {"preview_every"}
    assert set(body["properties"]) == drawn | set(JOB_FIELDS) and body["required"] == ["prompt"]
    assert body["properties"]["sampler"]["anyOf"][0]["enum"][0] == "euler"
    assert "1..50" in body["properties"]["num_inference_steps"]["description"]  # tiny-sdxl.yaml's bound
    assert {"/jobs/{job_id}", "/jobs/{job_id}/events", "/queue"} <= set(document["paths"])


def test_the_page_names_events_and_statuses_from_their_one_definition():
    import re

    from handler.wire.events import PREVIEW, PROGRESS, STATUS
    from jobs.routers.service import PAGE, page_html
    from jobs.state import STATUSES

    source = PAGE.read_text()
    script = source[source.index("<script") :]
    for name in (PROGRESS, PREVIEW, STATUS, *STATUSES):
        # spelled through EVENT / JOB_STATUS only (element ids, `$("progress")`, are the page's own)
        assert not re.search(rf"""(?<!\$\()["']{name}["']""", script), name
    served = page_html()
    assert "/*EVENT*/" not in served and "/*JOB_STATUS*/" not in served
    assert f'"{PROGRESS}": "{PROGRESS}"' in served and '"completed": "completed"' in served
