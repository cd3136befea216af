"""The serving core: one TorchServe batch of rows in, one Reply per row out, without TorchServe.

    rows -> decode + validate (per row; a bad row becomes its own 400)
         -> group (requests of the same size share every step's UNet forward)
         -> denoise (per-request state; a request leaves when done or out of time; progress streamed)
         -> encode (JSON body, raw image, or the final stream event per row, in row order)

The TorchServe adapter (:mod:`handler.torchserve_handler`) wires ``preprocess``/``inference``/
``postprocess`` to :meth:`SDXLService.parse`, :meth:`SDXLService.run` and :meth:`SDXLService.render`,
and gives :meth:`SDXLService.run` the function that sends stream chunks.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from .batching import group_requests
from .decode import decode_row
from .denoise import Denoiser, RequestState, image_seeds
from .encode import encode_image, json_body, preview_event, progress_event
from .errors import Reply, ResponseTooLarge, error_reply
from .generate import generate_group, generate_splitting
from .loading import LoadedPipeline, load_pipeline
from .metrics import Observation, batch_metrics
from .schema import IMAGE_CONTENT_TYPES, MAX_SEED, GenerationRequest, negotiate, parse_request
from .settings import HandlerSettings

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
# Sends one chunk to each streamed row it is given (row index -> bytes); the adapter implements it.
Emitter = Callable[[dict[int, bytes]], None]


def draw_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


@dataclass
class Batch:
    """One handler call's rows on their way through the stages."""

    started: float
    size: int
    requests: dict[int, GenerationRequest] = field(default_factory=dict)
    errors: dict[int, BaseException] = field(default_factory=dict)
    images: dict[int, list[Any]] = field(default_factory=dict)
    timings: dict[int, dict[str, float]] = field(default_factory=dict)
    group_of: dict[int, dict[str, int]] = field(default_factory=dict)
    streaming: set[int] = field(default_factory=set)  # rows whose stream has started (HTTP 200 sent)
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
        self.denoiser = Denoiser(loaded.pipeline, loaded.device, settings.memory_ceiling_latent_pixels)

    @classmethod
    def from_model_dir(
        cls, model_dir: str, model_yaml: dict[str, Any] | None, gpu_id: int | None = None
    ) -> SDXLService:
        """Load the pipeline named by the yaml's ``handler.model_path``, else the one in ``model_dir``."""
        settings = HandlerSettings.from_yaml(model_yaml)
        return cls(load_pipeline(settings.model_path or model_dir, settings, gpu_id), settings)

    # -- the three stages -------------------------------------------------------------------------

    def parse(self, rows: list[Any], accepts: list[str | None] | None = None, request_ids: Any = None) -> Batch:
        """Decode and validate every row (with its ``Accept`` header); draw the seeds left out.
        (``request_ids`` is unused: static batching keeps nothing between calls.)"""
        batch = Batch(started=time.perf_counter(), size=len(rows))
        accepts = accepts or [None] * len(rows)
        for row_index, (row, accept) in enumerate(zip(rows, accepts, strict=True)):
            try:
                batch.requests[row_index] = self.parse_row(row, accept)
            except Exception as exc:  # any failure here is this row's alone
                batch.errors[row_index] = exc
        return batch

    def parse_row(self, row: Any, accept: str | None) -> GenerationRequest:
        """One row (with its ``Accept`` header) -> a valid request with its seed drawn; raises InvalidRequest."""
        request = parse_request(negotiate(decode_row(row), accept), self.settings.limits, self.settings.defaults)
        return request if request.seed is not None else replace(request, seed=self.seed_source())

    def run(self, batch: Batch, emit: Emitter | None = None) -> Batch:
        """Denoise every group; an exception fails that group's rows only. Streams through ``emit``."""
        groups = group_requests(batch.requests, self.settings.max_images_per_call)
        batch.groups = len(groups)
        for group in groups:
            deadlines = [None if r.timeout_s is None else batch.started + r.timeout_s for r in group.requests]
            on_step = self._stream_hook(batch, group.rows, emit)
            try:
                result = generate_splitting(self.denoiser, group.requests, on_step, deadlines)
            except Exception as exc:  # isolate the failure to this group
                log.exception("group of %d request(s) %s failed", len(group.rows), group.key)
                batch.errors.update({row: exc for row in group.rows})
                continue
            summary = {"requests": len(group.rows), "images": group.images}
            for row, outcome, timings in zip(group.rows, result.outcomes, result.timings_ms, strict=True):
                batch.group_of[row] = summary
                batch.timings[row] = dict(timings)
                if isinstance(outcome, BaseException):
                    batch.errors[row] = outcome
                else:
                    batch.images[row] = outcome
        return batch

    def render(self, batch: Batch) -> list[Reply]:
        """One Reply per row, in row order."""
        encoded = self._encode_all(batch)
        replies = []
        for row_index in range(batch.size):
            try:
                if row_index in batch.errors:
                    raise batch.errors[row_index]
                reply = self._success(batch, row_index, encoded[row_index])
            except Exception as exc:
                reply = error_reply(exc)
            if row_index in batch.streaming:
                reply = self.as_final_event(reply)
            replies.append(reply)
        log.info(
            "batch of %d: %d group(s), %d failed, %.0f ms",
            batch.size,
            batch.groups,
            sum(r.status >= 400 or r.body.startswith(b'{"event":"error"') for r in replies),
            (time.perf_counter() - batch.started) * 1000,
        )
        return replies

    def metrics(self, batch: Batch, replies: list[Reply]) -> list[Observation]:
        return batch_metrics(batch, replies, self.gpu_memory_bytes())

    def gpu_memory_bytes(self) -> int | None:
        """Memory held by PyTorch tensors on this pipeline's GPU; None on the CPU."""
        if self.loaded.device.type != "cuda":
            return None
        import torch

        return torch.cuda.memory_allocated(self.loaded.device)

    def handle(self, rows: list[Any], accepts: list[str | None] | None = None, emit: Emitter | None = None):
        return self.render(self.run(self.parse(rows, accepts), emit))

    # -- helpers ----------------------------------------------------------------------------------

    def _stream_hook(self, batch: Batch, rows: list[int], emit: Emitter | None):
        """The per-step callback sending progress (and previews) to this group's streamed rows."""
        row_of_request = {id(batch.requests[row]): row for row in rows if batch.requests[row].stream}
        if emit is None or not row_of_request:
            return None

        def on_step(states: list[RequestState]) -> None:
            chunks = {}
            for state in states:
                row = row_of_request.get(id(state.request))
                if row is None:
                    continue
                lines = [progress_event(state)]
                every = state.request.preview_every
                if every and state.step % every == 0 and not state.finished:
                    lines.append(preview_event(state))
                chunks[row] = b"".join(lines)
            if chunks:
                batch.streaming.update(chunks)
                try:
                    emit(chunks)
                except Exception:  # a lost progress chunk must not fail the images being made
                    log.warning("could not send progress to %d streamed request(s)", len(chunks), exc_info=True)

        return on_step

    def _encode_all(self, batch: Batch) -> dict[int, list[bytes] | BaseException]:
        started = time.perf_counter()
        encoded = self.encode_images({row: (batch.requests[row], images) for row, images in batch.images.items()})
        elapsed_ms = (time.perf_counter() - started) * 1000
        for row in batch.images:
            batch.timings[row]["encode_image"] = elapsed_ms
        return encoded

    def encode_images(
        self, images: dict[Any, tuple[GenerationRequest, list[Any]]]
    ) -> dict[Any, list[bytes] | BaseException]:
        """Encode the images of several requests (key -> (request, PIL images)) at once. Pillow's encoders
        release the GIL, so threads run them in parallel (a 1024px PNG takes ~0.1-0.3 s, comparable to a GPU
        step). A failure stays with its key."""
        jobs = [(key, request, image) for key, (request, pictures) in images.items() for image in pictures]

        def encode(job: tuple[Any, GenerationRequest, Any]) -> bytes | BaseException:
            _, request, image = job
            try:
                return encode_image(image, request.output_format, self.settings)
            except Exception as exc:  # reported as this request's error
                return exc

        if len(jobs) > 1:
            with ThreadPoolExecutor(min(len(jobs), self.settings.encode_threads)) as pool:
                results = list(pool.map(encode, jobs))
        else:
            results = [encode(job) for job in jobs]
        encoded: dict[Any, list[bytes] | BaseException] = {key: [] for key in images}
        for (key, _, _), result in zip(jobs, results, strict=True):
            if isinstance(result, BaseException):
                encoded[key] = result
            elif isinstance(encoded[key], list):
                encoded[key].append(result)
        return encoded

    def _success(self, batch: Batch, row_index: int, encoded: list[bytes] | BaseException) -> Reply:
        if isinstance(encoded, BaseException):
            raise encoded
        timings = batch.timings[row_index]
        timings["total"] = (time.perf_counter() - batch.started) * 1000
        batch_info = {
            "scheduling": "static",
            "requests": batch.size,
            "rejected": sum(1 for row in batch.errors if row not in batch.requests),
            "groups": batch.groups,
            "group_requests": batch.group_of[row_index]["requests"],
            "group_images": batch.group_of[row_index]["images"],
        }
        return self.success_reply(batch.requests[row_index], encoded, timings, batch_info)

    def success_reply(
        self, request: GenerationRequest, encoded: list[bytes], timings: dict[str, float], batch_info: dict[str, Any]
    ) -> Reply:
        """The reply carrying a request's encoded images: a JSON document, or one raw image with X- headers.
        Raises ResponseTooLarge past ``max_response_bytes``."""
        document = {
            "seeds": image_seeds(request),
            "parameters": request.parameters(),
            "timings_ms": {name: round(ms, 1) for name, ms in timings.items()},
            "batch": batch_info,
        }
        if request.response_format == "image":
            reply = Reply(
                status=200,
                body=encoded[0],
                content_type=IMAGE_CONTENT_TYPES[request.output_format],
                headers={
                    "X-Seed": str(document["seeds"][0]),
                    "X-Parameters": json.dumps(document["parameters"], separators=(",", ":")),
                    "X-Timings-Ms": json.dumps(document["timings_ms"], separators=(",", ":")),
                    "X-Batch": json.dumps(document["batch"], separators=(",", ":")),
                },
            )
        else:
            reply = Reply(status=200, body=json_body(encoded, request.output_format, document))
        if len(reply.body) > self.settings.max_response_bytes:
            raise ResponseTooLarge(
                f"response of {len(reply.body)} bytes exceeds max_response_bytes={self.settings.max_response_bytes}; "
                "ask for jpeg or webp, fewer images or a smaller size"
            )
        return reply

    @staticmethod
    def as_final_event(reply: Reply) -> Reply:
        """A streamed row already answered 200: its outcome travels as the stream's last JSON line."""
        if reply.status >= 400:
            event = {"event": "error", **json.loads(reply.body)["error"]}
            return Reply(
                status=200, body=json.dumps(event, separators=(",", ":")).encode() + b"\n", content_type=NDJSON
            )
        # The success body is one JSON object holding the images: splice the event name in, no re-encoding.
        return Reply(status=200, body=b'{"event":"result",' + reply.body[1:] + b"\n", content_type=NDJSON)

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
            generate_group(self.denoiser, [request] * shape.batch_images)
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
