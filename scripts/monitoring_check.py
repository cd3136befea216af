"""Evaluate every monitoring query we ship with a real Prometheus scraping a real TorchServe.

    python scripts/monitoring_check.py --metrics 127.0.0.1:8082        # a running server's metrics address

Starts Prometheus (loopback, a free port, 1 s scrapes, the alert rules loaded) in a temporary folder,
waits ``--wait`` seconds of scrapes, then prints every expression of the Grafana dashboard, the alert rules,
the KEDA ScaledObject and the prometheus-adapter rules with what it returns. Prometheus is the Debian
package's (``scripts/install.sh`` installs it); tests/integration/test_prometheus.py does the same on a test
server with known traffic.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
MONITORING = REPO_ROOT / "deploy" / "monitoring"
KUBERNETES = REPO_ROOT / "deploy" / "kubernetes"
# What Kubernetes' scrape config adds to every TorchServe series (the adapter and per-pod panels use them).
POD_LABELS = {"namespace": "sdxl", "pod": "sdxl-torchserve-0"}


@dataclass(frozen=True)
class Query:
    source: str  # dashboard, alert, keda, adapter
    name: str  # panel title and legend, alert name, ...
    expr: str


def shipped_queries() -> list[Query]:
    """Every PromQL expression in deploy/: dashboard targets, alert rules, KEDA trigger, adapter rules (its
    templates filled as prometheus-adapter fills them for one pod)."""
    queries = []
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queries.append(Query("dashboard", f"{panel['title']} [{target.get('legendFormat', '')}]", target["expr"]))
    for group in yaml.safe_load((MONITORING / "alert-rules.yaml").read_text())["groups"]:
        queries += [Query("alert", rule["alert"], rule["expr"]) for rule in group["rules"]]
    keda = yaml.safe_load((KUBERNETES / "keda-scaledobject.yaml").read_text())
    queries += [Query("keda", t["type"], t["metadata"]["query"]) for t in keda["spec"]["triggers"]]
    adapter = yaml.safe_load(
        yaml.safe_load((KUBERNETES / "prometheus-adapter-rules.yaml").read_text())["data"]["config.yaml"]
    )
    matchers = ",".join(f'{name}="{value}"' for name, value in POD_LABELS.items())
    for rule in adapter["rules"]:
        name = rule["name"]["as"]
        queries.append(Query("adapter", f"{name} (seriesQuery)", rule["seriesQuery"]))
        filled = rule["metricsQuery"].replace("<<.LabelMatchers>>", matchers).replace("<<.GroupBy>>", "pod")
        queries.append(Query("adapter", f"{name} (metricsQuery)", filled))
    return queries


@dataclass
class Prometheus:
    """One Prometheus server on 127.0.0.1 scraping ``targets`` every second, with the alert rules loaded.

    Args:
        workdir (`Path`): its config, data and log.
        targets (`list[str]`): ``host:port`` of TorchServe metrics addresses.
        port (`int`): where it listens (127.0.0.1 only).
    """

    workdir: Path
    targets: list[str]
    port: int
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed: bash scripts/install.sh installs it with apt-get")
        self.workdir.mkdir(parents=True, exist_ok=True)
        shutil.copy(MONITORING / "alert-rules.yaml", self.workdir / "alert-rules.yaml")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["alert-rules.yaml"],
            "scrape_configs": [
                {"job_name": "torchserve", "static_configs": [{"targets": self.targets, "labels": POD_LABELS}]}
            ],
        }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        command = [
            binary,
            f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        with open(self.workdir / "prometheus.log", "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"Prometheus did not become ready:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def query(self, expr: str) -> dict[str, Any]:
        """``/api/v1/query`` now: ``{"status": "success", "data": {"result": [...]}}`` or an error document."""
        return requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=30).json()

    def values(self, expr: str) -> dict[str, float]:
        """The instant vector ``expr`` returns, as {labels (without __name__) as text: value}."""
        answer = self.query(expr)
        if answer.get("status") != "success":
            raise ValueError(f"{expr}: {answer.get('error')}")
        return {format_labels(s["metric"]): float(s["value"][1]) for s in answer["data"]["result"]}

    def log_tail(self, lines: int = 40) -> str:
        log = self.workdir / "prometheus.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def format_labels(metric: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(metric.items()) if k != "__name__") + "}"


def report(prometheus: Prometheus, queries: list[Query]) -> list[dict[str, Any]]:
    """Every query with what it returned now (or its error)."""
    rows = []
    for query in queries:
        try:
            rows.append({**query.__dict__, "values": prometheus.values(query.expr), "error": None})
        except ValueError as exc:
            rows.append({**query.__dict__, "values": {}, "error": str(exc)})
    return rows


def print_report(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        shown = row["error"] or (
            ", ".join(f"{labels} {value:.4g}" for labels, value in row["values"].items()) or "(no series)"
        )
        print(f"{row['source']:9} {row['name']}\n          {row['expr']}\n          -> {shown}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", default="127.0.0.1:8082", help="TorchServe's metrics address host:port")
    parser.add_argument("--port", type=int, default=0, help="Prometheus port (default: a free one)")
    parser.add_argument("--wait", type=float, default=15, help="seconds of scrapes before evaluating (default 15)")
    args = parser.parse_args(argv)
    from scripts.torchserve_control import free_port

    with tempfile.TemporaryDirectory(prefix="sdxl-prometheus-") as folder:
        prometheus = Prometheus(Path(folder), [args.metrics], args.port or free_port())
        prometheus.start()
        try:
            time.sleep(args.wait)
            print_report(report(prometheus, shipped_queries()))
        finally:
            prometheus.stop()


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(REPO_ROOT))
    main()
