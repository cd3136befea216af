"""The docs' request reference is generated from the field table, and every example, error and setting they show
is checked against the code, so they cannot drift apart."""

import json
import re

import pytest
import yaml

from handler.contract.reference import markdown_table
from handler.contract.settings import HandlerSettings
from tests.conftest import REPO_ROOT

REQUESTS = REPO_ROOT / "docs" / "requests.md"
CONFIGURATION = REPO_ROOT / "docs" / "configuration.md"


def test_the_request_table_matches_the_field_table_and_sdxl_yaml():
    text = REQUESTS.read_text()
    table = re.search(r"<!-- request-table:start -->\n(.*?)\n<!-- request-table:end -->", text, re.S).group(1)
    settings = HandlerSettings.from_yaml(yaml.safe_load((REPO_ROOT / "config" / "sdxl-base.yaml").read_text()))
    assert table == markdown_table(settings.limits, settings.defaults)


def test_the_metrics_table_is_the_handlers_metric_specs():
    from handler.runtime.metrics import markdown_table as metrics_table

    text = (REPO_ROOT / "docs" / "deploy.md").read_text()
    table = re.search(r"<!-- metrics-table:start -->\n(.*?)\n<!-- metrics-table:end -->", text, re.S).group(1)
    assert table == metrics_table()


def test_readme_quickstart_is_the_three_scripts_and_ci_runs_the_test_one():
    readme = (REPO_ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quickstart.strip().splitlines()]
    assert commands == ["bash scripts/quickstart.sh", "bash scripts/jobs.sh", "bash scripts/test.sh"]
    assert "bash scripts/test.sh" in (REPO_ROOT / ".ci" / "run").read_text()


def test_every_handler_setting_is_in_the_configuration_table():
    from dataclasses import fields

    readme = CONFIGURATION.read_text()
    table = readme.split("The `handler:` section", 1)[1].split("\n## ", 1)[0]
    # `continuous` is TorchServe's own top-level key, listed in the table above as `continuousBatching`.
    missing = [f.name for f in fields(HandlerSettings) if f.name != "continuous" and f"`{f.name}`" not in table]
    missing += [] if "| `continuousBatching` |" in readme else ["continuousBatching"]
    assert not missing, f"README configuration table lacks {missing}"


def _requests_section(title: str) -> str:
    return REQUESTS.read_text().split(title, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]


def _curl_bodies(text: str) -> list[str]:
    return re.findall(r"-d '([^']*)'", text)


def test_every_field_in_a_readme_or_docs_example_is_an_accepted_field():
    from handler.contract.fields import FIELD_NAMES as FIELDS
    from jobs.routers.submit import JOB_FIELDS  # POST /generate's own fields beside the schema

    errors = _requests_section("## Errors")
    texts = [(REPO_ROOT / "README.md").read_text()]
    texts += [path.read_text().replace(errors, "") for path in sorted((REPO_ROOT / "docs").glob("*.md"))]
    bodies = [json.loads(body) for text in texts for body in _curl_bodies(text)]
    assert len(bodies) >= 5
    unknown = {key for body in bodies for key in body if key not in (*FIELDS, *JOB_FIELDS)}
    assert not unknown, f"README examples use fields the schema rejects: {unknown}"


def test_the_readme_error_examples_are_the_errors_the_server_gives():
    from handler.contract.decode import decode_row
    from handler.contract.parse import parse_request
    from handler.wire.replies import error_reply

    settings = HandlerSettings.from_yaml(yaml.safe_load((REPO_ROOT / "config" / "sdxl-base.yaml").read_text()))
    shown = re.findall(r"-d '([^']*)'\n(\d{3}) (\{.*\})\n", _requests_section("## Errors"))
    assert len(shown) >= 4
    for body, status, document in shown:
        with pytest.raises(Exception) as raised:
            parse_request(decode_row({"body": body.encode()}), settings.limits, settings.defaults)
        reply = error_reply(raised.value)
        assert (reply.status, reply.json()) == (int(status), json.loads(document)), body


def test_the_readme_response_sample_shows_every_parameter_stage_and_accounting_key():
    from handler.contract.fields import FIELD_NAMES as FIELDS
    from handler.contract.stages import Stage

    sample = json.loads(_requests_section("## Response (200)").split("```json", 1)[1].split("```", 1)[0])
    assert list(sample["parameters"]) == list(FIELDS)
    assert set(sample["timings_ms"]) == {str(stage) for stage in Stage} - {"vae_encode"}  # text-to-image
    assert set(sample["batch"]) == {
        "scheduling",
        "requests",
        "rejected",
        "groups",
        "group_requests",
        "group_images",
        "unet_forwards",
    }
