"""TorchServe adapter: the only module that imports ``ts``.

It wires BaseHandler's stages to the serving core (:class:`handler.runtime.core.Core`, in whichever batching mode the
model yaml names), reports each row's own status and headers through the context (so one bad request never
fails its batch-mates), sends stream chunks with TorchServe's intermediate responses, and gives each row's
stop flag to TorchServe as ``context.stopping_criteria``. Archived as the model's ``--handler``; TorchServe
requires exactly one class defined here.
"""

from __future__ import annotations

import atexit
import logging
from typing import Any

from ts.handler_utils.utils import send_intermediate_predict_response
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

from handler.contract.errors import CLIENT_VISIBLE_ERRORS
from handler.runtime.core import ServingCore
from handler.runtime.metrics import Observation, startup_observations
from handler.runtime.startup import build_core
from handler.wire.replies import NDJSON, Reply

log = logging.getLogger(__name__)


class StableDiffusionXLHandler(BaseHandler):
    """SDXL text-to-image with request batching, per-request errors, streaming and raw image responses."""

    def __init__(self):
        super().__init__()
        self.core: ServingCore | None = None

    def initialize(self, context: Any) -> None:
        """Load the pipeline and warm it up; TorchServe reports READY only after this returns."""
        properties = context.system_properties
        self.core = build_core(
            properties["model_dir"],
            getattr(context, "model_yaml_config", None),
            gpu_id=properties.get("gpu_id"),
            serving_name=getattr(context, "model_name", None),
        )
        self._record(context, startup_observations(tuple(error.__name__ for error in CLIENT_VISIBLE_ERRORS)))
        # TorchServe has no unload hook for a handler: the worker process ends, so close the core as it exits.
        atexit.register(self.core.close)
        self.initialized = True

    def preprocess(self, data: list[Any]) -> Any:
        accepts = [self._request_header(i, "accept") for i in range(len(data))]
        return self.core.parse(data, accepts, [self.context.request_ids[i] for i in range(len(data))])

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        return self.core.run(data, emit=self._send_chunks)

    def postprocess(self, data: Any) -> list[bytes]:
        replies = self.core.render(data)
        for index, reply in enumerate(replies):
            self._report(index, reply)
        # Set on EVERY call, one flag per row: None leaves an ordinary response alone, False sends a chunk
        # with more to follow, True ends a response whose first chunk went out earlier.
        self.context.stopping_criteria = [lambda _output, stop=reply.stop: stop for reply in replies]
        try:
            self._record(self.context, self.core.metrics(data, replies))
        except Exception:  # metrics never fail a batch
            log.warning("could not record metrics", exc_info=True)
        return [reply.body for reply in replies]

    @staticmethod
    def _record(context: Any, observations: list[Observation]) -> None:
        """Forward observations (declared in config/metrics.yaml) to TorchServe."""
        for observation in observations:
            spec = observation.spec
            dimensions = [Dimension(name, value) for name, value in observation.labels.items()]
            context.metrics.add_metric(
                spec.name, observation.value, spec.unit, dimensions=dimensions, metric_type=MetricTypes(spec.kind)
            )

    def _send_chunks(self, chunks: dict[int, bytes]) -> None:
        """One intermediate HTTP chunk per streamed row (TorchServe marks it ``ts_stream_next: true``)."""
        for index in chunks:
            self.context.set_response_content_type(index, NDJSON)
        request_ids = {index: self.context.request_ids[index] for index in chunks}
        send_intermediate_predict_response(chunks, request_ids, "Intermediate Prediction success", 200, self.context)

    def _request_header(self, index: int, name: str) -> str | None:
        headers = self.context.get_all_request_header(index) or {}
        return next((str(v) for k, v in headers.items() if str(k).lower() == name), None)

    def _report(self, index: int, reply: Reply) -> None:
        self.context.set_response_status(reply.status, reply.phrase, idx=index)
        self.context.set_response_content_type(index, reply.content_type)
        for name, value in reply.headers.items():
            self.context.set_response_header(index, name, value)
