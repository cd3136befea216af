"""The serving core: one handler call's rows in, one Reply per row out, without TorchServe, in either mode.

    parse   forget requests whose client left; decode + validate new rows (a bad row is answered alone, at
            once) and admit them to the engine (prompts encoded, noise drawn)
    run     static batching: advance the call's requests until every one is done, streaming progress as it
            goes; continuous batching: advance every request in flight by ``steps_per_call`` steps
    render  per row: its last reply (images or error) if it is done, else a chunk (:mod:`handler.wire.replies`)
    metrics what the call adds to the handler's metrics, from the replies' own outcomes

In TorchServe's ``continuousBatching`` mode the frontend re-sends every request in flight on each handler call
(with an empty body: only its id and headers) and adds new ones up to ``batchSize``; the core keeps each
request's :class:`~handler.runtime.engine.Flight` by request id until it leaves. In static mode every row is new and
leaves in the call that brought it. The adapters (:mod:`handler.adapters.torchserve_handler`) know no more than
:class:`ServingCore`.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from handler.contract.decode import decode_row, negotiate
from handler.contract.fields import MAX_SEED
from handler.contract.parse import parse_request
from handler.contract.prompts import PromptTokenizers
from handler.contract.request import Defaults, GenerationRequest, Limits
from handler.contract.settings import HandlerSettings
from handler.contract.stages import Stage
from handler.model.denoise import Denoiser
from handler.model.identity import model_identity
from handler.model.loading import LoadedPipeline
from handler.model.lora_catalogue import LoraCatalogue
from handler.model.request_state import image_seeds
from handler.model.step_table import live_step_plans
from handler.runtime.engine import Engine
from handler.runtime.flight import Flight
from handler.runtime.metrics import Observation, call_metrics
from handler.runtime.side_work import SideWorker
from handler.runtime.step_policy import StepPolicy
from handler.wire.encode import encode_many, stream_lines
from handler.wire.replies import Reply, chunk_reply, error_reply, final_reply, success_reply

log = logging.getLogger(__name__)

# Sends one chunk to each streamed row it is given (row index -> bytes); the adapter implements it.
Emitter = Callable[[dict[int, bytes]], None]


def draw_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


@dataclass
class Call:
    """One handler call's rows on their way through the stages."""

    number: int
    started: float
    size: int
    rejected: dict[int, BaseException] = field(default_factory=dict)  # rows answered without being admitted
    flights: dict[int, Flight] = field(default_factory=dict)  # rows in the engine (admitted now or before)
    # rows that end in this call: (request or None when rejected, ordinary reply, stage timings in ms)
    ended: dict[int, tuple[GenerationRequest | None, Reply, dict[str, float]]] = field(default_factory=dict)
    disconnected: int = 0  # requests dropped at this call because their client went away
    steps: int = 0  # shared steps run in this call
    groups: int = 0  # static batching: size groups among the new rows


class ServingCore(Protocol):
    """What an adapter (TorchServe, Triton) calls, in order, once per batch of rows."""

    def parse(self, rows: list[Any], accepts: list[str | None] | None, request_ids: list[str] | None) -> Call: ...
    def run(self, call: Call, emit: Emitter | None = None) -> Call: ...
    def render(self, call: Call) -> list[Reply]: ...
    def metrics(self, call: Call, replies: list[Reply]) -> list[Observation]: ...
    def handle(self, rows: list[Any]) -> list[Reply]: ...
    def close(self) -> None: ...


class Core:
    """Serves SDXL generation requests on one loaded pipeline, in the mode its settings name.

    Args:
        loaded (`LoadedPipeline`): the pipeline, its device, dtype and attention backend.
        settings (`HandlerSettings`): request defaults and bounds, batching mode, encoding settings.
        seed_source (`Callable[[], int]`, defaults to a cryptographic RNG): draws seeds for requests
            that give none.
        keep_images (`bool`, defaults to False): replies carry their decoded images too (``Reply.images``), for
            an adapter that sends pixels (Triton) instead of the encoded bytes.
        serving_name (`str`, defaults to None): the name the server serves the model by (TorchServe's model
            name), written as ``Model`` in each image's recipe unless the yaml names a ``model_path``.
    """

    def __init__(
        self,
        loaded: LoadedPipeline,
        settings: HandlerSettings,
        seed_source: Callable[[], int] = draw_seed,
        keep_images: bool = False,
        serving_name: str | None = None,
    ):
        self.loaded = loaded
        self.settings = settings
        self.seed_source = seed_source
        self.tokenizers = PromptTokenizers(loaded.pipeline.tokenizer, getattr(loaded.pipeline, "tokenizer_2", None))
        self.step_plans = None
        if loaded.refiner is not None:
            self.step_plans = live_step_plans(loaded.pipeline.scheduler, loaded.refiner.scheduler)
        catalogue = None
        if settings.lora_catalogue:
            catalogue = LoraCatalogue(
                loaded.pipeline,
                settings.lora_catalogue,
                settings.max_loaded_loras,
                grouped=settings.lora_batching == "grouped",
            )
        self.denoiser = Denoiser(
            loaded.pipeline, loaded.device, settings.memory_ceiling_latent_pixels, catalogue, loaded.refiner
        )
        # Written into each image's recipe: the folder the yaml names, else the name the server serves it by.
        name = None if settings.model_path else serving_name
        self.model = model_identity(loaded.source, settings.unet_path, name)
        side = SideWorker(loaded.device, overlap=settings.overlaps_side_work(loaded.device.type))
        self.engine = Engine(
            self.denoiser,
            settings.max_images_per_call,
            side,
            encode=lambda images: encode_many(images, settings, self.model),
            keep_images=keep_images,
            policy=StepPolicy(settings.step_policy, settings.max_rows_per_step, settings.priority_aging_s),
        )
        self.flights: dict[str, Flight] = {}  # request id -> its flight, for every request in the engine
        self.calls = 0

    # -- the four stages ----------------------------------------------------------------------------

    def parse(
        self, rows: list[Any], accepts: list[str | None] | None = None, request_ids: list[str] | None = None
    ) -> Call:
        """Forget requests whose client left; admit the new rows (with their ``Accept`` headers).

        Joiners are prepared here, in the call: prompt encoding is short next to a step (~10 ms on a GPU),
        and a joiner cannot take its first step without it."""
        self.calls += 1
        call = Call(number=self.calls, started=time.perf_counter(), size=len(rows))
        accepts = accepts or [None] * len(rows)
        request_ids = request_ids or [f"call-{self.calls}-row-{row}" for row in range(len(rows))]

        # 1. TorchServe stops re-sending a request whose connection closed: free what it held.
        for request_id in set(self.flights) - set(request_ids):
            self.engine.abort(self.flights.pop(request_id))
            call.disconnected += 1
            log.info("request %s left: its client disconnected", request_id)

        # 2. Rows in flight come back (continuous batching, with an empty body); new rows join here.
        in_flight = len(self.flights)
        for row, (row_data, accept, request_id) in enumerate(zip(rows, accepts, request_ids, strict=True)):
            flight = self.flights.get(request_id)
            if flight is None:
                try:
                    request = self.parse_row(row_data, accept)
                    flight = self.engine.admit(
                        request, request_id, call.started, joined_call=call.number, in_flight_at_join=in_flight
                    )
                except Exception as exc:  # this row's alone
                    call.rejected[row] = exc
                    continue
                self.flights[request_id] = flight
            call.flights[row] = flight

        # 3. Static batching's record of the size groups its rows share steps in.
        if not self.settings.continuous:
            groups = self.engine.groups(call.flights)
            call.groups = len(groups)
            for group in groups:
                summary = {"requests": len(group.rows), "images": group.images}
                for row in group.rows:
                    call.flights[row].group = summary
        return call

    def parse_row(self, row: Any, accept: str | None) -> GenerationRequest:
        """One row (with its ``Accept`` header) -> a valid request with its seed drawn; raises InvalidRequest."""
        request = parse_request(negotiate(decode_row(row), accept), *self._bounds, self.tokenizers, self.step_plans)
        return request if request.seed is not None else replace(request, seed=self.seed_source())

    def run(self, call: Call, emit: Emitter | None = None, sequential: bool = False) -> Call:
        """Advance the call's requests (see the module doc). Static batching streams each step's progress
        through ``emit``; ``sequential`` runs its requests one at a time (the benchmark's baseline)."""
        flights = list(call.flights.values())
        if self.settings.continuous:
            call.steps = self.engine.advance(flights, max_steps=self.settings.steps_per_call)
            return call
        on_step = self._stream_hook(call, emit)
        for part in [[f] for f in flights] if sequential else [flights]:
            call.steps += self.engine.advance(part, on_step=on_step)
        return call

    def render(self, call: Call) -> list[Reply]:
        """One Reply per row, in row order, each with its ``stop`` for TorchServe."""
        replies = []
        for row in range(call.size):
            if row in call.rejected:
                reply = error_reply(call.rejected[row])  # an ordinary response
                call.ended[row] = (None, reply, {})
            else:
                flight = call.flights[row]
                events = stream_lines(flight.reports)
                flight.reports.clear()
                if flight.done:
                    outcome = self._outcome(call, flight)
                    call.ended[row] = (flight.request, outcome, flight.timings_ms)
                    reply = final_reply(outcome, flight.request, events, flight.committed)
                    if self.flights.pop(flight.key, None) is not None:
                        self.engine.finish(flight)
                else:
                    reply = chunk_reply(flight.request, events, first=not flight.committed)
                    flight.committed = True
            replies.append(reply)
        log.info(
            "call %d: %d row(s), %d joined, %d ended (%d failed), %d in flight, %d step(s), %.0f ms",
            call.number,
            call.size,
            sum(f.joined_call == call.number for f in call.flights.values()),
            len(call.ended),
            sum(reply.error is not None for _, reply, _ in call.ended.values()),
            len(self.flights),
            call.steps,
            (time.perf_counter() - call.started) * 1000,
        )
        return replies

    def metrics(self, call: Call, replies: list[Reply]) -> list[Observation]:
        loras = self.denoiser.loras
        with loras.lock if loras else contextlib.nullcontext():
            events = loras.stats.take_events() if loras else []
            loaded = len(loras.loaded) if loras else None
        return call_metrics(call.size, call.ended, call.disconnected, self.gpu_memory_bytes(), events, loaded)

    def handle(self, rows: list[Any], accepts: Any = None, emit: Emitter | None = None, ids: Any = None) -> list[Reply]:
        """parse -> run -> render in one call (Triton, tests, benchmarks)."""
        return self.render(self.run(self.parse(rows, accepts, ids), emit))

    def close(self) -> None:
        """Forget every request in flight and stop the engine's side worker; adapters call it on unload."""
        for flight in self.flights.values():
            self.engine.abort(flight)
        self.flights.clear()
        self.engine.close()

    # -- around the stages --------------------------------------------------------------------------

    @property
    def _bounds(self) -> tuple[Limits, Defaults]:
        return self.settings.limits, self.settings.defaults

    def gpu_memory_bytes(self) -> int | None:
        """Memory held by PyTorch tensors on this pipeline's GPU; None on the CPU."""
        if self.loaded.device.type != "cuda":
            return None
        import torch

        return torch.cuda.memory_allocated(self.loaded.device)

    def _stream_hook(self, call: Call, emit: Emitter | None) -> Callable[[list[Flight]], None] | None:
        """Static batching: after each step, send the streamed rows' new progress lines as one chunk each."""
        row_of = {id(flight): row for row, flight in call.flights.items() if flight.request.stream}
        if emit is None or not row_of:
            return None

        def on_step(stepped: list[Flight]) -> None:
            chunks = {}
            for flight in stepped:
                row = row_of.get(id(flight))
                if row is not None and flight.reports:
                    chunks[row] = stream_lines(flight.reports)
                    flight.reports.clear()
                    flight.committed = True  # its headers may go out even if sending fails
            if chunks:
                try:
                    emit(chunks)
                except Exception:  # a lost progress chunk must not fail the images being made
                    log.warning("could not send progress to %d streamed request(s)", len(chunks), exc_info=True)

        return on_step

    def _outcome(self, call: Call, flight: Flight) -> Reply:
        """The ordinary reply of a request that is done: its images, or its error."""
        try:
            if isinstance(flight.outcome, BaseException):
                raise flight.outcome
            flight.timings_ms[Stage.TOTAL] = (time.perf_counter() - flight.arrived) * 1000
            return success_reply(
                flight.request,
                image_seeds(flight.request),
                flight.outcome,
                flight.timings_ms,
                self._accounting(call, flight),
                self.settings.max_response_bytes,
                images=flight.images,
            )
        except Exception as exc:
            return error_reply(exc)

    def _accounting(self, call: Call, flight: Flight) -> dict[str, Any]:
        """The ``batch`` section of a reply: the handler's own record of how the request ran (with a step budget,
        also the steps the policy parked it for)."""
        parked = {} if self.settings.max_rows_per_step is None else {"parked_steps": flight.parked_steps}
        if self.settings.continuous:
            return parked | {
                "scheduling": "continuous",
                "joined_call": flight.joined_call,
                "left_call": call.number,
                "in_flight_at_join": flight.in_flight_at_join,
                "shared_steps": flight.shared_steps,
                "steps_per_call": self.settings.steps_per_call,
                "unet_forwards": flight.state.forwards,
            }
        return parked | {
            "scheduling": "static",
            "requests": call.size,
            "rejected": len(call.rejected),
            "groups": call.groups,
            "group_requests": flight.group["requests"],
            "group_images": flight.group["images"],
            "unet_forwards": flight.state.forwards,
        }
