"""Work beside the shared denoising steps: joiners' prompt encoding, finishers' VAE decode and image encoding.

With ``overlap`` on, it runs on one side thread and, on CUDA, its own stream, so the requests in flight do not
wait for it; with it off, it runs inline, inside the handler call, and every request in flight waits.
Either way the caller gets a :class:`~concurrent.futures.Future`.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch


class SideWorker:
    """Runs jobs on a side thread (``overlap=True``) or inline.

    Args:
        device (`torch.device`): the pipeline's device; on CUDA the side thread uses its own stream.
        overlap (`bool`): run jobs beside the caller (True) or at once, in the caller's thread (False).
    """

    def __init__(self, device: torch.device, overlap: bool):
        self.overlap = overlap
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="sdxl-side") if overlap else None
        self.cuda = device.type == "cuda"
        self.main_stream = torch.cuda.current_stream(device) if self.cuda else None
        self.side_stream = torch.cuda.Stream(device) if self.cuda and overlap else None

    def submit(self, job: Callable[[], Any]) -> Future:
        if self.executor is None:
            future: Future = Future()
            try:
                future.set_result(job())
            except Exception as exc:  # delivered through the future, as on the side thread
                future.set_exception(exc)
            return future
        return self.executor.submit(self._on_side_stream, job)

    def share(self, *tensors: torch.Tensor) -> None:
        """Tensors that pass between the main and side streams: their memory is not reused by either stream
        until both are done with them."""
        if self.side_stream is None:
            return
        for tensor in tensors:
            tensor.record_stream(self.main_stream)
            tensor.record_stream(self.side_stream)

    def _on_side_stream(self, job: Callable[[], Any]) -> Any:
        if self.side_stream is None:
            return job()
        with torch.cuda.stream(self.side_stream):
            self.side_stream.wait_stream(self.main_stream)  # inputs the main stream may still be computing
            result = job()
            self.side_stream.synchronize()  # outputs complete before the main thread sees them
        return result

    def shutdown(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)
