"""A real TorchServe on 127.0.0.1 with the shipped config (token auth on), its own ports, TEMP and workdir.

The archive is built by scripts/build_archive.py from the tiny model, exactly as the quickstart does.
"""

from __future__ import annotations

import shutil
import time

import pytest

from scripts.build_archive import build_archive
from scripts.torchserve_control import REPO_ROOT, TorchServe, loopback_addresses, write_config


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory):
    if shutil.which("java") is None:
        pytest.fail("Java 17+ is needed for the TorchServe integration tests (apt-get install openjdk-17-jre-headless)")
    root = tmp_path_factory.mktemp("archive")
    build_archive("tiny", export_path=root / "model_store", build_dir=root / "build")
    return root / "model_store"


def while_worker_is_busy(server, calls: list) -> list:
    """Run ``calls`` (function, body) at once while a slow request holds the worker, so TorchServe queues
    them up and hands them to the handler as one batch."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(calls) + 1) as pool:
        blocker = pool.submit(server.predict, {"prompt": "slow", "num_inference_steps": 40, "seed": 0})
        time.sleep(0.5)
        futures = [pool.submit(function, server, body) for function, body in calls]
        assert blocker.result().status_code == 200
        return [future.result() for future in futures]


def soak(server, clients: int, seconds: float, abandon_every: int = 0) -> None:
    """``clients`` clients send mixed requests for ``seconds``; each answer must be exactly its own request's,
    and the worker's RSS may not grow by more than 150 MB. With ``abandon_every`` N, every Nth request is
    streamed and its client disconnects after the first event."""
    import threading

    import psutil

    worker = psutil.Process(server.worker_pids()[0])
    for i in range(4):  # settle allocator caches before measuring growth
        server.predict({"prompt": f"warm {i}", "seed": i})
    rss_before = worker.memory_info().rss
    stop_at = time.monotonic() + seconds
    counter, lock, results, abandoned = iter(range(10**9)), threading.Lock(), [], []

    def client():
        while time.monotonic() < stop_at:
            with lock:
                n = next(counter)
            body = {"prompt": f"soak request {n}", "seed": 1000 + n, "num_inference_steps": 2 + n % 3}
            if abandon_every and n % abandon_every == abandon_every - 1:
                response = server.predict({**body, "stream": True, "num_inference_steps": 30}, stream=True)
                next(response.iter_lines())
                response.close()
                abandoned.append(n)
                continue
            response = server.predict(body)
            results.append((body, response.status_code, response.json()))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    growth_mb = (worker.memory_info().rss - rss_before) / 2**20
    print(
        f"\nsoak: {clients} clients x {seconds} s: {len(results)} requests, {len(abandoned)} abandoned, "
        f"RSS growth {growth_mb:.1f} MB"
    )
    assert len(results) >= clients * 3
    for body, status, document in results:
        assert status == 200, document
        assert document["seeds"] == [body["seed"]] and document["parameters"]["prompt"] == body["prompt"]
    assert len({body["seed"] for body, _, _ in results}) == len(results)  # one answer per request
    assert growth_mb < 150, f"worker RSS grew {growth_mb:.1f} MB over the soak"


def start_server(workdir, model_store, **overrides) -> TorchServe:
    config = write_config(
        workdir / "config.properties",
        {**loopback_addresses(), **overrides},
    )
    server = TorchServe(workdir=workdir, config=config, model_store=model_store)
    server.start()
    try:
        server.wait_ready(timeout=240)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_store):
    server = start_server(tmp_path_factory.mktemp("torchserve"), model_store)
    yield server
    server.stop()


def server_with_model_yaml(root, properties: dict | None = None, **changes) -> TorchServe:
    """Its own TorchServe whose model yaml is config/tiny-sdxl.yaml with ``changes`` (top-level keys), and
    config.properties with ``properties``."""
    import yaml

    model_yaml = {**yaml.safe_load((REPO_ROOT / "config" / "tiny-sdxl.yaml").read_text()), **changes}
    config = root / "model.yaml"
    config.write_text(yaml.safe_dump(model_yaml))
    build_archive("tiny", config=config, export_path=root / "model_store", build_dir=root / "build")
    (root / "server").mkdir()
    return start_server(root / "server", root / "model_store", **(properties or {}))


@pytest.fixture(scope="session")
def options_server(tmp_path_factory):
    """Its own TorchServe whose model has a LoRA catalogue (ink, film; max_loaded_loras 1) and the tiny refiner
    (one server for tests/integration/test_loras.py and test_refiner.py)."""
    import yaml

    from handler.model.tiny_model import save_tiny_pipeline
    from tests.helpers import make_lora

    root = tmp_path_factory.mktemp("options")
    handler = yaml.safe_load((REPO_ROOT / "config" / "tiny-sdxl.yaml").read_text())["handler"]
    catalogue = {
        name: {"path": make_lora(root / name, seed), "scale": 0.8} for seed, name in enumerate(["ink", "film"])
    }
    refiner = save_tiny_pipeline(root / "tiny-refiner", refiner=True)
    server = server_with_model_yaml(
        root,
        handler={**handler, "lora_catalogue": catalogue, "max_loaded_loras": 1, "refiner_path": str(refiner)},
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fragile_server(tmp_path_factory):
    """Its own TorchServe whose model has a 3 s responseTimeout, for crash and timeout tests."""
    server = server_with_model_yaml(tmp_path_factory.mktemp("fragile"), responseTimeout=3)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def continuous_server(tmp_path_factory):
    """Its own TorchServe in step-level continuous batching mode (up to 8 requests in flight, 1 step a call)."""
    server = server_with_model_yaml(tmp_path_factory.mktemp("continuous"), continuousBatching=True, batchSize=8)
    yield server
    server.stop()
