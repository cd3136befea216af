"""The README's request reference is generated from the schema, so the two cannot drift apart."""

import re

import yaml

from handler.schema import markdown_table
from handler.settings import HandlerSettings
from tests.conftest import REPO_ROOT


def test_readme_request_table_matches_the_schema_and_sdxl_yaml():
    readme = (REPO_ROOT / "README.md").read_text()
    table = re.search(r"<!-- request-table:start -->\n(.*?)\n<!-- request-table:end -->", readme, re.S).group(1)
    settings = HandlerSettings.from_yaml(yaml.safe_load((REPO_ROOT / "config" / "sdxl-base.yaml").read_text()))
    assert table == markdown_table(settings.limits, settings.defaults)


def test_readme_quickstart_is_the_two_scripts_and_ci_runs_the_test_one():
    readme = (REPO_ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quickstart.strip().splitlines()]
    assert commands == ["bash scripts/quickstart.sh", "bash scripts/test.sh"]
    assert "bash scripts/test.sh" in (REPO_ROOT / ".ci" / "run").read_text()


def test_every_handler_setting_is_in_the_readme_configuration_table():
    from dataclasses import fields

    readme = (REPO_ROOT / "README.md").read_text()
    table = readme.split("The `handler:` section", 1)[1].split("\n## ", 1)[0]
    # `continuous` is TorchServe's own top-level key, listed in the table above as `continuousBatching`.
    missing = [f.name for f in fields(HandlerSettings) if f.name != "continuous" and f"`{f.name}`" not in table]
    missing += [] if "| `continuousBatching` |" in readme else ["continuousBatching"]
    assert not missing, f"README configuration table lacks {missing}"
