"""TorchServe adapter: the only module that imports ``ts``.

It wires BaseHandler's stages to :class:`handler.service.SDXLService` and reports each row's own status
through ``context.set_response_status(..., idx)``, so one bad request never fails its batch-mates.
Archived as the model's ``--handler``; TorchServe requires exactly one class defined here.
"""

from __future__ import annotations

import logging
from typing import Any

from ts.torch_handler.base_handler import BaseHandler

from handler.errors import Reply
from handler.service import Batch, SDXLService

log = logging.getLogger(__name__)


class StableDiffusionXLHandler(BaseHandler):
    """SDXL text-to-image with request batching, per-request errors and base64 image responses."""

    def __init__(self):
        super().__init__()
        self.service: SDXLService | None = None

    def initialize(self, context: Any) -> None:
        """Load the pipeline and warm it up; TorchServe reports READY only after this returns."""
        properties = context.system_properties
        self.service = SDXLService.from_model_dir(
            properties["model_dir"], getattr(context, "model_yaml_config", None), gpu_id=properties.get("gpu_id")
        )
        self.service.warmup()
        self.initialized = True

    def preprocess(self, data: list[Any]) -> Batch:
        return self.service.parse(data)

    def inference(self, data: Batch, *args: Any, **kwargs: Any) -> Batch:
        return self.service.run(data)

    def postprocess(self, data: Batch) -> list[bytes]:
        replies = self.service.render(data)
        for index, reply in enumerate(replies):
            self._report(index, reply)
        return [reply.body for reply in replies]

    def _report(self, index: int, reply: Reply) -> None:
        self.context.set_response_status(reply.status, reply.phrase, idx=index)
        self.context.set_response_content_type(index, reply.content_type)
        for name, value in reply.headers.items():
            self.context.set_response_header(index, name, value)
