"""The alert rules checked by Prometheus' own promtool: they parse, and fire (or not) at the design document's
thresholds on synthetic series (tests/monitoring/alert-rules.test.yaml)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.helpers import MONITORING, alert_rules, dashboard_exprs

ALERT_RULES = MONITORING / "alert-rules.yaml"
ALERT_TESTS = REPO_ROOT / "tests" / "monitoring" / "alert-rules.test.yaml"


def promtool(*args: str) -> subprocess.CompletedProcess:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is needed: bash scripts/install.sh installs Prometheus with apt-get")
    return subprocess.run([tool, *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)


def test_the_alert_rules_parse():
    result = promtool("check", "rules", str(ALERT_RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_past_its_threshold_and_duration_and_not_inside_them():
    result = promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {case["alertname"] for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
              for case in test["alert_rule_test"]}  # fmt: skip
    assert tested == {rule["alert"] for rule in alert_rules()}, "an alert without a promtool test"


def test_the_error_rate_reads_zero_when_healthy_and_when_idle(tmp_path):
    ratio = next(r["expr"] for r in alert_rules() if r["alert"] == "SDXLErrorRateHigh").rsplit(" > ", 1)[0]
    assert ratio in dashboard_exprs(), "the dashboard's error rate is not the alert's"
    outcomes = ("ok", "client_error", "server_error")
    cases = {"healthy": ("0+10x20", "0+1x20", "0x20"), "idle": ("5x20", "1x20", "0x20")}
    tests = [
        {
            "name": name,
            "interval": "15s",
            "input_series": [
                {"series": f'sdxl_requests_total{{Outcome="{outcome}"}}', "values": values}
                for outcome, values in zip(outcomes, series, strict=True)
            ],
            "promql_expr_test": [{"expr": ratio, "eval_time": "4m", "exp_samples": [{"labels": "{}", "value": 0}]}],
        }
        for name, series in cases.items()
    ]
    (tmp_path / "rules.yaml").write_text(ALERT_RULES.read_text())
    test_file = tmp_path / "error-rate.test.yaml"
    test_file.write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "tests": tests}))
    result = promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr
