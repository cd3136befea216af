"""Baseline: receives the same TorchServe batches as ours but runs the requests one at a time.

This is the pattern most published TorchServe diffusion handlers follow (a loop over the batch, one
pipeline call per request). Everything else (decoding, validation, encoding) is ours, so the comparison
isolates batching. Archived by bench/run.py as its own model; never shipped.
"""

from __future__ import annotations

from typing import Any

from handler.adapters.torchserve_handler import StableDiffusionXLHandler


class OneAtATimeHandler(StableDiffusionXLHandler):
    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        return self.core.run(data, emit=self._send_chunks, sequential=True)
