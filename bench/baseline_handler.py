"""Baseline: receives the same TorchServe batches as ours but runs the requests one at a time.

This is the pattern most published TorchServe diffusion handlers follow (a loop over the batch, one
pipeline call per request). Everything else (decoding, validation, encoding) is ours, so the comparison
isolates batching. Archived by bench/run.py as its own model; never shipped.
"""

from __future__ import annotations

from dataclasses import replace

from handler.service import Batch
from handler.torchserve_handler import StableDiffusionXLHandler


class OneAtATimeHandler(StableDiffusionXLHandler):
    def inference(self, data: Batch, *args, **kwargs) -> Batch:
        for row, request in list(data.requests.items()):
            single = self.core.run(
                replace(data, requests={row: request}, errors={}, images={}, timings={}, group_of={})
            )
            data.images.update(single.images)
            data.timings.update(single.timings)
            data.group_of.update(single.group_of)
            data.errors.update(single.errors)
        data.groups = len(data.requests)
        return data
