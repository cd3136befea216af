"""Deployment files, checked offline: Dockerfile lint and install steps, Kubernetes schemas, KServe layout,
and every dashboard/alert query against the metric names the server declares."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from handler.runtime.metrics import METRICS
from scripts.torchserve_control import read_properties
from scripts.torchserve_control import tool as console_script
from tests.conftest import REPO_ROOT
from tests.helpers import alert_rules, dashboard_exprs, referenced_metrics

DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()
KUBERNETES = REPO_ROOT / "deploy" / "kubernetes"


def tool(name: str) -> str:
    found = console_script(name)
    if not Path(found).exists() and shutil.which(found) is None:
        pytest.fail(f"{name} is not installed (pip install -e '.[dev]')")
    return found


def test_dockerfile_passes_hadolint():
    result = subprocess.run([tool("hadolint"), "Dockerfile"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_installs_with_the_projects_own_script_torch_first():
    run = re.search(r"RUN (\S+=.*?bash scripts/install\.sh)", DOCKERFILE, re.S)
    assert run, "the image must install through scripts/install.sh"
    assert all(f'{arg}="${{{arg}}}"' in run.group(1) for arg in ("TORCH_SPEC", "TORCH_INDEX_URL", "EXTRAS"))
    install = (REPO_ROOT / "scripts" / "install.sh").read_text()
    assert install.index('pip install -qq "$TORCH_SPEC"') < install.index(
        'pip install -qq ${EDITABLE--e} ".[${EXTRAS}]"'
    )
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    default_extras = re.search(r"^ARG EXTRAS=(\S+)$", DOCKERFILE, re.M).group(1).split(",")
    for extra in default_extras:
        assert re.search(rf"^{extra} = \[", pyproject, re.M), f"extra {extra} is not in pyproject.toml"
    for pattern in re.search(r"include = \[(.*?)\]", pyproject).group(1).replace('"', "").split(", "):
        package = pattern.rstrip("*")
        assert f"COPY {package}/ {package}/" in DOCKERFILE, f"the image misses the {package} package"


def test_image_runs_non_root_with_healthcheck_and_no_secrets():
    assert re.search(r"^USER 1000:1000$", DOCKERFILE, re.M)
    assert "HEALTHCHECK" in DOCKERFILE and "scripts/healthcheck.sh" in DOCKERFILE
    assert '"--foreground"' in DOCKERFILE and "config/container.properties" in DOCKERFILE
    assert not re.search(r"(?i)^(ARG|ENV) \S*(TOKEN|KEY|SECRET|PASSWORD)", DOCKERFILE, re.M)


# Keys a derived config may change from ./config.properties, and why (see each file's header).
CONTAINER_DIFFERENCES = {
    "inference_address",
    "metrics_address",
    "model_store",
    "load_models",
    "metrics_config",
    "allowed_urls",
}
ALLOWED_DIFFERENCES = {
    "config/container.properties": CONTAINER_DIFFERENCES,
    "deploy/kserve/config/config.properties": CONTAINER_DIFFERENCES | {"disable_token_authorization"},
}


@pytest.mark.parametrize("path", sorted(ALLOWED_DIFFERENCES))
def test_derived_configs_differ_from_the_shipped_one_only_where_they_must(path):
    shipped = read_properties(REPO_ROOT / "config.properties")
    derived = read_properties(REPO_ROOT / path)
    changed = {key for key in shipped.keys() | derived.keys() if shipped.get(key) != derived.get(key)}
    assert changed == ALLOWED_DIFFERENCES[path]
    assert derived["management_address"].startswith("http://127.0.0.1:")


def test_kubernetes_manifests_validate_against_the_schemas():
    core = ["deployment.yaml", "service.yaml", "networkpolicy.yaml", "hpa.yaml", "prometheus-adapter-rules.yaml"]
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", *core], cwd=KUBERNETES, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(core)


def test_deployment_has_what_a_gpu_pod_needs():
    deployment = yaml.safe_load((KUBERNETES / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"/dev/shm", "/models/sdxl-base-1.0"} <= {m["mountPath"] for m in container["volumeMounts"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "healthcheck.sh" in " ".join(container[probe]["exec"]["command"])
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 900  # sdxl-base.yaml startupTimeout
    assert "drain.py" in " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    model_yaml = yaml.safe_load((REPO_ROOT / "config" / "sdxl-base.yaml").read_text())
    assert pod["terminationGracePeriodSeconds"] > 15 + model_yaml["responseTimeout"]


def test_torchserve_is_internal_and_its_probes_renew_the_pods_own_keys():
    """Clients reach TorchServe only through the gateway (no inference port on the Service, only metrics past the
    NetworkPolicy); the probes and the drain read the key file where TorchServe writes it in each pod and renew
    it (scripts/healthcheck.sh is what tests/integration/test_key_expiry.py runs past key expiry)."""
    service = yaml.safe_load((KUBERNETES / "service.yaml").read_text())
    assert [port["port"] for port in service["spec"]["ports"]] == [8082]
    policy = yaml.safe_load((KUBERNETES / "networkpolicy.yaml").read_text())
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == [8082]
    selected = policy["spec"]["podSelector"]["matchExpressions"][0]["values"]
    for path in (KUBERNETES / "deployment.yaml", KUBERNETES / "jobs" / "workers.yaml"):
        pod = yaml.safe_load(path.read_text())["spec"]["template"]
        assert pod["metadata"]["labels"]["app.kubernetes.io/name"] in selected
        container = next(c for c in pod["spec"]["containers"] if c["name"] == "torchserve")
        key_file = {e["name"]: e["value"] for e in container["env"]}["KEY_FILE"]
        assert key_file == container["workingDir"] + "/key_file.json", path
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["exec"]["command"] == ["bash", "/opt/sdxl-torchserve/scripts/healthcheck.sh"]
        drain = container["lifecycle"]["preStop"]["exec"]["command"]
        assert drain[drain.index("--key-file") + 1] == key_file


def test_keda_and_kserve_objects_are_complete():
    keda = yaml.safe_load((KUBERNETES / "keda-scaledobject.yaml").read_text())
    assert keda["spec"]["scaleTargetRef"]["name"] == "sdxl-torchserve"
    assert "ts_queue_latency_microseconds" in keda["spec"]["triggers"][0]["metadata"]["query"]
    service = yaml.safe_load((REPO_ROOT / "deploy" / "kserve" / "inferenceservice.yaml").read_text())
    container = service["spec"]["predictor"]["containers"][0]
    assert "/mnt/models/config/config.properties" in container["args"]
    assert "/mnt/models/model-store" in container["args"]
    config = read_properties(REPO_ROOT / "deploy" / "kserve" / "config" / "config.properties")
    assert config["model_store"] == "/mnt/models/model-store"


def declared_metric_names() -> set[str]:
    config = yaml.safe_load((REPO_ROOT / "config" / "metrics.yaml").read_text())
    names = set()
    for section in ("ts_metrics", "model_metrics"):
        for kind, metrics in config[section].items():
            for metric in metrics:
                names.add(metric["name"])
                if kind == "histogram":
                    names |= {f"{metric['name']}_bucket", f"{metric['name']}_sum", f"{metric['name']}_count"}
    return names


def test_every_dashboard_and_alert_query_uses_declared_metrics():
    declared = declared_metric_names()
    exprs = dashboard_exprs() + [rule["expr"] for rule in alert_rules()]
    used = set().union(*(referenced_metrics(e) for e in exprs))
    assert used, "no metric found in the queries"
    assert used <= declared, f"undeclared metrics: {used - declared}"
    # Every metric the handler exports has a panel or an alert.
    assert {spec.name for spec in METRICS} <= {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}


def test_the_triton_dockerfile_passes_hadolint_and_installs_torch_first_and_numpy_1():
    path = "deploy/triton/Dockerfile"
    result = subprocess.run([tool("hadolint"), path], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (REPO_ROOT / path).read_text()
    assert text.index('"${TORCH_SPEC}"') < text.index('pip install --no-cache-dir ".[model]" ') and '"numpy<2"' in text
    assert re.search(r"^USER 1000:1000$", text, re.M) and "HEALTHCHECK" in text
    assert "COPY deploy/triton/stable_diffusion_xl/" in text


def test_the_shipped_triton_repository_is_the_generators_output_for_sdxl_base(tmp_path):
    from scripts.triton_repository import MODEL_NAME, write_repository

    shipped = REPO_ROOT / "deploy" / "triton" / MODEL_NAME
    generated = write_repository(REPO_ROOT / "config" / "sdxl-base.yaml", tmp_path, "/models/sdxl-base-1.0")
    for name in ("config.pbtxt", "configs/cpu.pbtxt", "model.yaml", "1/model.py"):
        assert (shipped / name).read_text() == (generated / name).read_text(), name
    config = (shipped / "config.pbtxt").read_text()
    assert "kind: KIND_GPU" in config and "kind: KIND_CPU" in (shipped / "configs" / "cpu.pbtxt").read_text()
    assert "max_batch_size: 4" in config and "max_queue_delay_microseconds: 100000" in config  # sdxl-base.yaml
