"""The serving core: one TorchServe batch of rows in, one Reply per row out, without TorchServe.

    rows -> decode + validate (per row; a bad row becomes its own 400)
         -> group (one pipeline call per compatible group)
         -> generate (a failing group fails only its own rows)
         -> encode (one JSON body per row, in row order)

The TorchServe adapter (:mod:`handler.torchserve_handler`) wires ``preprocess``/``inference``/
``postprocess`` to :meth:`SDXLService.parse`, :meth:`SDXLService.run` and :meth:`SDXLService.render`.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from .batching import group_requests
from .decode import decode_row
from .encode import encode_image, json_body
from .errors import Reply, ResponseTooLarge, error_reply
from .generate import generate_group, image_seeds
from .loading import LoadedPipeline, load_pipeline
from .schema import MAX_SEED, GenerationRequest, parse_request
from .settings import HandlerSettings

log = logging.getLogger(__name__)


def draw_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


@dataclass
class Batch:
    """One handler call's rows on their way through the stages."""

    started: float
    size: int
    requests: dict[int, GenerationRequest] = field(default_factory=dict)
    errors: dict[int, Reply] = field(default_factory=dict)
    images: dict[int, list[Any]] = field(default_factory=dict)
    timings: dict[int, dict[str, float]] = field(default_factory=dict)
    group_of: dict[int, dict[str, int]] = field(default_factory=dict)
    groups: int = 0


class SDXLService:
    """Serves SDXL generation requests on one loaded pipeline.

    Args:
        loaded (`LoadedPipeline`): the pipeline, its device, dtype and attention backend.
        settings (`HandlerSettings`): request defaults and bounds, batching and encoding settings.
        seed_source (`Callable[[], int]`, defaults to a cryptographic RNG): draws seeds for requests
            that give none.
    """

    def __init__(self, loaded: LoadedPipeline, settings: HandlerSettings, seed_source: Callable[[], int] = draw_seed):
        self.loaded = loaded
        self.settings = settings
        self.seed_source = seed_source

    @classmethod
    def from_model_dir(
        cls, model_dir: str, model_yaml: dict[str, Any] | None, gpu_id: int | None = None
    ) -> SDXLService:
        """Load the pipeline named by the yaml's ``handler.model_path``, else the one in ``model_dir``."""
        settings = HandlerSettings.from_yaml(model_yaml)
        return cls(load_pipeline(settings.model_path or model_dir, settings, gpu_id), settings)

    # -- the three stages -------------------------------------------------------------------------

    def parse(self, rows: list[Any]) -> Batch:
        """Decode and validate every row; draw the seeds the requests left out."""
        batch = Batch(started=time.perf_counter(), size=len(rows))
        for row_index, row in enumerate(rows):
            try:
                request = parse_request(decode_row(row), self.settings.limits, self.settings.defaults)
            except Exception as exc:
                batch.errors[row_index] = error_reply(exc)
                continue
            if request.seed is None:
                request = replace(request, seed=self.seed_source())
            batch.requests[row_index] = request
        return batch

    def run(self, batch: Batch) -> Batch:
        """One pipeline call per group; an exception fails that group's rows only."""
        groups = group_requests(batch.requests, self.settings.max_images_per_call)
        batch.groups = len(groups)
        for group in groups:
            try:
                result = generate_group(self.loaded.pipeline, self.loaded.device, group.requests)
            except Exception as exc:
                log.exception("group of %d request(s) %s failed", len(group.rows), group.key)
                reply = error_reply(exc)
                batch.errors.update({row: reply for row in group.rows})
                continue
            summary = {"requests": len(group.rows), "images": group.images}
            for row, images in zip(group.rows, result.images, strict=True):
                batch.images[row] = images
                batch.timings[row] = dict(result.timings_ms)
                batch.group_of[row] = summary
        return batch

    def render(self, batch: Batch) -> list[Reply]:
        """One Reply per row, in row order."""
        encoded = self._encode_all(batch)
        replies = []
        for row_index in range(batch.size):
            if row_index in batch.errors:
                replies.append(batch.errors[row_index])
                continue
            try:
                replies.append(self._success(batch, row_index, encoded[row_index]))
            except Exception as exc:
                replies.append(error_reply(exc))
        log.info(
            "batch of %d: %d group(s), %d rejected or failed, %.0f ms",
            batch.size,
            batch.groups,
            sum(r.status >= 400 for r in replies),
            (time.perf_counter() - batch.started) * 1000,
        )
        return replies

    def handle(self, rows: list[Any]) -> list[Reply]:
        return self.render(self.run(self.parse(rows)))

    # -- helpers ----------------------------------------------------------------------------------

    def _encode_all(self, batch: Batch) -> dict[int, list[bytes] | BaseException]:
        """Encode every image of the batch at once; Pillow's encoders release the GIL, so threads run them in
        parallel (a 1024px PNG takes ~0.1-0.3 s, comparable to a GPU step). A failure stays with its row."""
        jobs = [(row, image) for row, images in batch.images.items() for image in images]
        started = time.perf_counter()

        def encode(job: tuple[int, Any]) -> bytes | BaseException:
            row, image = job
            try:
                return encode_image(image, batch.requests[row].output_format, self.settings)
            except Exception as exc:  # reported as this row's error
                return exc

        if len(jobs) > 1:
            with ThreadPoolExecutor(min(len(jobs), self.settings.encode_threads)) as pool:
                results = list(pool.map(encode, jobs))
        else:
            results = [encode(job) for job in jobs]
        encoded: dict[int, list[bytes] | BaseException] = {row: [] for row in batch.images}
        for (row, _), result in zip(jobs, results, strict=True):
            if isinstance(result, BaseException):
                encoded[row] = result
            elif isinstance(encoded[row], list):
                encoded[row].append(result)
        elapsed_ms = (time.perf_counter() - started) * 1000
        for row in batch.images:
            batch.timings[row]["encode_image"] = elapsed_ms
        return encoded

    def _success(self, batch: Batch, row_index: int, encoded: list[bytes] | BaseException) -> Reply:
        if isinstance(encoded, BaseException):
            raise encoded
        request = batch.requests[row_index]
        timings = batch.timings[row_index]
        timings["total"] = (time.perf_counter() - batch.started) * 1000
        document = {
            "seeds": image_seeds(request),
            "parameters": request.parameters(),
            "timings_ms": {name: round(ms, 1) for name, ms in timings.items()},
            "batch": {
                "requests": batch.size,
                "rejected": sum(1 for r in batch.errors.values() if r.status < 500),
                "groups": batch.groups,
                "group_requests": batch.group_of[row_index]["requests"],
                "group_images": batch.group_of[row_index]["images"],
            },
        }
        body = json_body(encoded, request.output_format, document)
        if len(body) > self.settings.max_response_bytes:
            raise ResponseTooLarge(
                f"response of {len(body)} bytes exceeds max_response_bytes={self.settings.max_response_bytes}; "
                "ask for jpeg or webp, fewer images or a smaller size"
            )
        return Reply(status=200, body=body)

    def warmup(self) -> list[float]:
        """Generate once at every configured warmup shape, so the first user request is fast."""
        seconds = []
        for shape in self.settings.warmup_shapes():
            request = GenerationRequest(
                prompt="warmup",
                negative_prompt="",
                prompt_2=None,
                negative_prompt_2=None,
                num_inference_steps=shape.num_inference_steps,
                guidance_scale=self.settings.defaults.guidance_scale,
                width=shape.width,
                height=shape.height,
                seed=0,
                num_images_per_prompt=1,
                output_format="png",
            )
            started = time.perf_counter()
            generate_group(self.loaded.pipeline, self.loaded.device, [request] * shape.batch_images)
            seconds.append(time.perf_counter() - started)
            log.info(
                "warmup %dx%d, %d step(s), %d image(s): %.2f s",
                shape.width,
                shape.height,
                shape.num_inference_steps,
                shape.batch_images,
                seconds[-1],
            )
        return seconds
