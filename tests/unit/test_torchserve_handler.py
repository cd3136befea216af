"""The TorchServe adapter through TorchServe's own Context and RequestProcessor (no server).

The only stand-in is the metrics sink: a real one needs a running frontend.
"""

import json

import pytest

ts_context = pytest.importorskip("ts.context")

from handler.adapters.torchserve_handler import StableDiffusionXLHandler  # noqa: E402
from tests.conftest import tiny_yaml  # noqa: E402


class RecordingMetrics:
    def __init__(self):
        self.times = []
        self.added = []

    def add_time(self, name, value, idx=None, unit="ms"):
        self.times.append(name)

    def add_metric(self, name, value, unit, idx=None, dimensions=(), metric_type=None):
        self.added.append((name, value, {d.name: d.value for d in dimensions}))


def make_context(model_dir, rows: int, model_yaml=None, request_ids=None):
    context = ts_context.Context(
        model_name="stable-diffusion-xl",
        model_dir=str(model_dir),
        manifest={"model": {"modelName": "stable-diffusion-xl"}},
        batch_size=4,
        gpu=None,
        mms_version="0.12.0",
        metrics=RecordingMetrics(),
        model_yaml_config=model_yaml or tiny_yaml(),
    )
    context.request_processor = [ts_context.RequestProcessor({}) for _ in range(rows)]
    context.request_ids = dict(enumerate(request_ids or [f"id-{n}" for n in range(rows)]))
    return context


@pytest.fixture(scope="module")
def started(tiny_model_dir):
    context = make_context(tiny_model_dir, 1)
    handler = StableDiffusionXLHandler()
    handler.initialize(context)
    return handler, context


@pytest.fixture
def handler(started):
    return started[0]


def test_initialize_loads_warms_up_and_creates_every_outcome_series_at_zero(started):
    handler, context = started
    assert handler.initialized
    assert handler.core.loaded.attention == "sdpa"
    zeros = {(name, tuple(labels.values())) for name, value, labels in context.metrics.added if value == 0}
    outcomes = {"ok", "client_error", "server_error", "disconnected"}
    assert {("sdxl_requests_total", (outcome,)) for outcome in outcomes} <= zeros
    assert {("sdxl_requests_rejected_total", (r,)) for r in ("InvalidRequest", "OutOfMemory")} <= zeros


def test_handle_sets_each_rows_own_status_and_content_type(handler, tiny_model_dir):
    rows = [
        {"body": b'{"prompt": "a cat", "seed": 3}'},
        {"body": b'{"prompt": "a cat", "cfg": 7}'},
        {"body": bytearray(b'{"prompt": "a dog", "seed": 4}')},
    ]
    context = make_context(tiny_model_dir, len(rows))
    bodies = handler.handle(rows, context)

    assert len(bodies) == 3 and all(isinstance(b, bytes) for b in bodies)
    assert [context.get_response_status(i)[0] for i in range(3)] == [200, 400, 200]
    assert context.get_response_status(1) == (400, "Bad Request")
    assert [context.get_response_content_type(i) for i in range(3)] == ["application/json"] * 3
    assert json.loads(bodies[1])["error"]["field"] == "cfg"
    assert json.loads(bodies[0])["seeds"] == [3]
    assert json.loads(bodies[2])["batch"]["requests"] == 3
    assert "HandlerTime" in context.metrics.times
    recorded = [(name, labels) for name, value, labels in context.metrics.added if value]
    assert recorded.count(("sdxl_requests_total", {"Outcome": "ok"})) == 2
    assert ("sdxl_requests_rejected_total", {"Reason": "InvalidRequest"}) in recorded


def test_continuous_mode_sets_a_stop_flag_for_every_row_on_every_call(tiny_model_dir):
    model_yaml = {**tiny_yaml(), "continuousBatching": True}
    handler = StableDiffusionXLHandler()
    handler.initialize(make_context(tiny_model_dir, 1, model_yaml))
    first = make_context(tiny_model_dir, 2, model_yaml, ["a", "b"])
    handler.handle([{"body": b'{"prompt": "x", "num_inference_steps": 2}'}, {"body": b'{"prompt": 1}'}], first)
    assert [stop(None) for stop in first.stopping_criteria] == [False, None]
    assert first.get_response_headers(0)["X-Deferred-Status"] == "true"
    assert first.get_response_status(1)[0] == 400

    second = make_context(tiny_model_dir, 1, model_yaml, ["a"])  # in flight: TorchServe re-sends an empty row
    bodies = handler.handle([{}], second)
    assert [stop(None) for stop in second.stopping_criteria] == [True]
    assert json.loads(bodies[0])["batch"]["left_call"] == 2


def test_the_benchmarks_one_at_a_time_baseline_runs_through_the_same_adapter(tiny_model_dir):
    from bench.baseline_handler import OneAtATimeHandler

    baseline = OneAtATimeHandler()
    baseline.initialize(make_context(tiny_model_dir, 1))
    context = make_context(tiny_model_dir, 2)
    bodies = baseline.handle(
        [{"body": b'{"prompt": "a", "seed": 1}'}, {"body": b'{"prompt": "b", "width": 1}'}], context
    )
    assert [context.get_response_status(i)[0] for i in range(2)] == [200, 400]
    assert json.loads(bodies[0])["seeds"] == [1] and json.loads(bodies[0])["batch"]["groups"] == 1


def test_static_mode_ends_a_streamed_row_and_leaves_a_plain_one_alone(handler, tiny_model_dir):
    context = make_context(tiny_model_dir, 2)
    context.cl_socket = None  # no frontend: the progress chunks cannot be sent (logged), the final reply can
    bodies = handler.handle([{"body": b'{"prompt": "s", "stream": true}'}, {"body": b'{"prompt": "p"}'}], context)
    # TorchServe turns True into ts_stream_next=false (the stream's end); None leaves an ordinary response alone.
    assert [stop(None) for stop in context.stopping_criteria] == [True, None]
    assert json.loads(bodies[0].splitlines()[-1])["event"] == "result"
    assert "event" not in json.loads(bodies[1])
