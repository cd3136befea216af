"""Helpers shared by test files (tiny engines, image comparisons, LoRAs built offline, metrics and dashboard
queries): test files import from here, never from one another."""

from __future__ import annotations

import base64
import io
import itertools
import json
import re
import time
from dataclasses import dataclass, field

import numpy as np
import requests
import torch
import yaml
from PIL import Image

from handler.model.denoise import Denoiser
from handler.runtime.core import Core
from handler.runtime.engine import Engine
from handler.runtime.side_work import SideWorker
from tests.conftest import REPO_ROOT


@dataclass
class Response:
    """What one client receives: the first reply's status and headers, then every body chunk."""

    status: int | None = None
    content_type: str | None = None
    headers: dict = field(default_factory=dict)
    chunks: list = field(default_factory=list)
    calls: list = field(default_factory=list)  # call numbers it took part in
    done: bool = False

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def json(self):
        return json.loads(self.body)

    def events(self):
        return [json.loads(line) for line in self.body.splitlines()]


ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


# from tests/unit/test_generation.py
def make_engine(loaded) -> Engine:
    """The engine alone: decoded PIL images out, no encoding, no side thread."""
    return Engine(Denoiser(loaded.pipeline, loaded.device), 8, SideWorker(loaded.device, overlap=False))


# from tests/unit/test_generation.py
def max_diff(a, b) -> int:
    return int(np.abs(image_pixels(a) - image_pixels(b)).max())


# from tests/unit/test_generation.py
def pipeline_image(pipeline, seed: int = 7, **call):
    """diffusers' own StableDiffusionXLPipeline on one request (the tiny defaults unless ``call`` says
    otherwise), with a per-image CPU generator list as the engine uses."""
    arguments = {"prompt": "a red cat", "num_inference_steps": 4, "guidance_scale": 5.0, "width": 64, "height": 64}
    generator = [torch.Generator("cpu").manual_seed(seed)]
    return pipeline(**{**arguments, **call}, generator=generator).images[0]


# from tests/unit/test_core.py
def decode_images(reply):
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in reply.json()["images"]]


# from tests/unit/test_core.py
def count_unet_forwards(monkeypatch, loaded, fail_above_rows=None, after=1):
    """Rows of every UNet forward that ran; with ``fail_above_rows``, forwards over that many rows after the
    first ``after`` ones run out of memory (a GPU that fragmented)."""
    unet, real_forward, rows = loaded.pipeline.unet, loaded.pipeline.unet.forward, []

    def forward(sample, *args, **kwargs):
        if fail_above_rows is not None and len(rows) >= after and sample.shape[0] > fail_above_rows:
            raise torch.OutOfMemoryError(f"simulated: {sample.shape[0]} rows")
        rows.append(sample.shape[0])
        return real_forward(sample, *args, **kwargs)

    monkeypatch.setattr(unet, "forward", forward)
    return rows


# from tests/unit/test_continuous.py
class Frontend:
    def __init__(self, core: Core, batch_size: int = 4):
        self.core = core
        self.batch_size = batch_size
        self.ids = (f"req-{n}" for n in itertools.count())
        self.queue: list[tuple[str, dict, str | None]] = []
        self.in_flight: list[str] = []
        self.responses: dict[str, Response] = {}

    def submit(self, body: dict | bytes, accept: str | None = None) -> Response:
        request_id = next(self.ids)
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.queue.append((request_id, {"body": raw}, accept))
        self.responses[request_id] = Response()
        return self.responses[request_id]

    def disconnect(self, response: Response) -> None:
        request_id = next(i for i, r in self.responses.items() if r is response)
        self.in_flight.remove(request_id)

    def call(self) -> None:
        joining = self.queue[: self.batch_size - len(self.in_flight)]
        del self.queue[: len(joining)]
        ids = self.in_flight + [request_id for request_id, _, _ in joining]
        rows = [{} for _ in self.in_flight] + [r for _, r, _ in joining]
        accepts = [None for _ in self.in_flight] + [a for _, _, a in joining]
        call = self.core.parse(rows, accepts, ids)
        replies = self.core.render(self.core.run(call))
        assert len(replies) == len(ids)
        for request_id, reply in zip(ids, replies, strict=True):
            response = self.responses[request_id]
            first = response.status is None
            assert not (first and reply.stop is True), "a first reply with stop=True reaches the client as nothing"
            assert first or reply.stop is not None, "a plain reply after a chunk corrupts the connection"
            if first:
                response.status, response.content_type, response.headers = (
                    reply.status,
                    reply.content_type,
                    reply.headers,
                )
            response.chunks.append(reply.body)
            response.calls.append(call.number)
            response.done = reply.stop is not False
        self.in_flight = [request_id for request_id in ids if not self.responses[request_id].done]

    def run_until_idle(self, max_calls: int = 200) -> None:
        for _ in range(max_calls):
            if not self.queue and not self.in_flight:
                return
            self.call()
        raise AssertionError("requests still in flight")


# from tests/unit/test_continuous.py
def body_pixels(body: dict) -> np.ndarray:
    """The first image of a JSON response body, as int16 pixels."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][0]))), dtype=np.int16)


def image_pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# from tests/unit/test_lora_catalogue.py
def make_lora(folder, seed: int, text_encoder: bool = False, targets=ATTENTION, dora: bool = False):
    """A tiny random LoRA (rank 4) on the tiny UNet's ``targets`` (attention; add "conv1" for a LoCon), optionally
    DoRA, optionally also on the first text encoder, saved as diffusers saves LoRAs."""
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from handler.model.tiny_model import build_tiny_pipeline

    pipeline = build_tiny_pipeline()
    torch.manual_seed(seed)
    unet_config = LoraConfig(r=4, lora_alpha=4, target_modules=list(targets), init_lora_weights=False, use_dora=dora)
    pipeline.unet.add_adapter(unet_config)
    layers = {"unet_lora_layers": get_peft_model_state_dict(pipeline.unet)}
    if text_encoder:
        from peft import inject_adapter_in_model

        text_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        encoder = inject_adapter_in_model(text_config, pipeline.text_encoder)  # peft's own: no transformers gate
        state = encoder.state_dict()
        layers["text_encoder_lora_layers"] = {k.replace(".default", ""): v for k, v in state.items() if "lora_" in k}
    StableDiffusionXLPipeline.save_lora_weights(folder, **layers)
    return str(folder)


# from tests/unit/test_deploy.py
MONITORING = REPO_ROOT / "deploy" / "monitoring"


# from tests/unit/test_deploy.py
def referenced_metrics(expr: str) -> set[str]:
    expr = re.sub(r"\bby\s*\([^)]*\)", "", expr)  # grouping labels are not metrics
    words = set(re.findall(r"\b([A-Za-z_][A-Za-z0-9_]*)\s*[\[{]", expr))
    words |= set(re.findall(r"\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)", expr))
    promql = {"rate", "sum", "avg", "max", "by", "histogram_quantile", "le", "clamp_min"}
    return {w for w in words if w not in promql}


# from tests/unit/test_deploy.py
def dashboard_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


# from tests/unit/test_deploy.py
def alert_rules() -> list[dict]:
    return yaml.safe_load((MONITORING / "alert-rules.yaml").read_text())["groups"][0]["rules"]


# from tests/integration/test_metrics.py
LORA_SERIES = ("sdxl_lora_", "sdxl_loras_")


# from tests/integration/test_metrics.py
def scrape(server, wanted: list[str], timeout: float = 20) -> str:
    """/metrics once every wanted series is there (the frontend parses worker metrics asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        text = requests.get(f"{server.metrics_url}/metrics", timeout=10).text
        if all(re.search(pattern, text, re.M) for pattern in wanted) or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


# from tests/integration/test_metrics.py
def value(text: str, pattern: str) -> float:
    match = re.search(pattern + r"\S* (\S+)$", text, re.M)
    assert match, f"no series matching {pattern!r} in /metrics:\n{text[:3000]}"
    return float(match.group(1))
