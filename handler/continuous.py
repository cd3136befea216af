"""Step-level continuous batching: requests join and leave a running denoising loop between steps.

In TorchServe's ``continuousBatching`` mode the frontend re-sends every in-flight request on each handler call
(with an empty body: only its id and headers) and adds new ones up to ``batchSize``. The handler keeps each
request's :class:`~handler.denoise.RequestState` by request id and tells TorchServe, per request and per
call, whether it is done (:attr:`handler.errors.Reply.stop`). One call:

    1. forget  requests that stopped coming (their client went away): their state is freed
    2. admit   new rows: decode + validate (a bad row is answered alone, at once), encode prompts, draw noise
    3. advance every request in flight by ``steps_per_call`` steps: ONE UNet forward per image size per step
               (per-sample timesteps and guidance), so a 4-step request leaves while a 30-step one goes on
    4. leave   finished (or failed, or timed-out) requests are decoded and encoded: their reply is this
               call's chunk; the others get a progress chunk (streamed) or an empty one (which TorchServe
               puts nothing on the wire for)

The HTTP status and headers go out with a request's FIRST chunk. A request that finishes in its first call
(or is rejected) gets an ordinary response. A request that goes on has answered 200 already, so a later
failure (timeout, out of memory) arrives as the ordinary error document in the body; its first chunk says
so with the ``X-Deferred-Status: true`` header.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .batching import group_requests
from .denoise import RequestState
from .encode import preview_event, progress_event
from .errors import OutOfMemory, Reply, TimeBudgetExceeded, error_reply, is_out_of_memory
from .metrics import Observation, call_metrics
from .schema import IMAGE_CONTENT_TYPES, GenerationRequest
from .service import NDJSON, SDXLService
from .side_work import SideWorker

log = logging.getLogger(__name__)

DEFERRED_STATUS_HEADER = "X-Deferred-Status"
DEFERRED_NOTE = (
    "continuous batching: HTTP 200 was sent when this request joined the running batch, so its outcome is this body"
)


@dataclass(eq=False)
class Flight:
    """One request in the running loop, from the call it joins until the call it leaves.

    Its life: denoising (stepped with the others) -> finishing (decode + encode, on the side worker) -> done
    (``outcome`` set; it leaves at the next render).
    """

    request_id: str
    state: RequestState
    joined_call: int
    in_flight_at_join: int  # requests already in the loop when it joined
    arrived: float  # time.perf_counter() at its first handler call
    pending: Future | None = None  # its finish job on the side worker
    committed: bool = False  # a chunk went out: HTTP 200 and the headers are sent
    shared_steps: int = 0  # steps whose UNet forward it shared with other requests
    denoise_started: float | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    done: bool = False
    outcome: list[bytes] | BaseException | None = None  # its encoded images, or why it has none

    @property
    def request(self) -> GenerationRequest:
        return self.state.request

    @property
    def deadline(self) -> float | None:
        timeout = self.request.timeout_s
        return None if timeout is None else self.arrived + timeout

    @property
    def denoising(self) -> bool:
        return self.pending is None and not self.done and not self.state.finished


@dataclass
class Call:
    """One handler call's rows on their way through the stages."""

    number: int
    started: float
    size: int
    rejected: dict[int, BaseException] = field(default_factory=dict)  # rows answered without joining
    flights: dict[int, Flight] = field(default_factory=dict)  # rows in the loop (joined now or before)
    events: dict[int, list[bytes]] = field(default_factory=dict)  # streamed rows' progress lines
    finals: dict[int, Reply] = field(default_factory=dict)  # the ordinary reply of each row that ends here
    timings: dict[int, dict[str, float]] = field(default_factory=dict)  # stage -> ms, of rows that succeed
    disconnected: int = 0  # requests dropped at this call because their client went away
    steps: int = 0  # shared steps run in this call


class ContinuousScheduler:
    """Runs :class:`SDXLService`'s requests with step-level continuous batching (see the module doc).

    Args:
        service (`SDXLService`): parsing, denoiser, encoding and replies (shared with static batching).
    """

    def __init__(self, service: SDXLService):
        self.service = service
        self.settings = service.settings
        self.denoiser = service.denoiser
        device = service.loaded.device
        self.side = SideWorker(device, overlap=self.settings.overlaps_side_work(device.type))
        self.flights: dict[str, Flight] = {}  # request id -> its flight, for every request in the loop
        self.calls = 0

    # -- the three stages -------------------------------------------------------------------------

    def parse(self, rows: list[Any], accepts: list[str | None], request_ids: list[str]) -> Call:
        """Forget requests whose client left; admit new rows (validated, prompts encoded, noise drawn).

        Joiners start here, in the call: prompt encoding is short next to a step (~10 ms on a GPU), and a
        joiner cannot take its first step without it."""
        self.calls += 1
        call = Call(number=self.calls, started=time.perf_counter(), size=len(rows))

        # 1. TorchServe stops re-sending a request whose connection closed: free what it held.
        for request_id in set(self.flights) - set(request_ids):
            gone = self.flights.pop(request_id)
            if gone.pending is not None:
                gone.pending.cancel()
            call.disconnected += 1
            log.info("request %s left the loop: its client disconnected", request_id)

        # 2. Rows already in flight come back with an empty body; new rows join at this step boundary.
        in_flight = len(self.flights)
        for row, (row_data, accept, request_id) in enumerate(zip(rows, accepts, request_ids, strict=True)):
            flight = self.flights.get(request_id)
            if flight is None:
                try:
                    state = self.denoiser.start(self.service.parse_row(row_data, accept))
                except Exception as exc:  # this row's alone
                    call.rejected[row] = exc
                    continue
                flight = Flight(request_id, state, call.number, in_flight, arrived=call.started)
                flight.timings_ms["encode_prompt"] = state.timings_ms["encode_prompt"]
                self.flights[request_id] = flight
            call.flights[row] = flight
        return call

    def run(self, call: Call, emit: Any = None) -> Call:
        """Advance every request in flight by ``steps_per_call`` steps; hand finishers to the side worker.

        ``emit`` is unused: progress travels as each call's own chunk."""
        flights = call.flights
        for _ in range(self.settings.steps_per_call):
            active = {row: f for row, f in flights.items() if f.denoising}
            if not active:
                break
            self._step(call, active)
            call.steps += 1
            finished = [f for f in active.values() if not f.done and f.state.finished]
            for group in group_requests({id(f): f.request for f in finished}, self.settings.max_images_per_call):
                group_flights = [f for f in finished if id(f) in group.rows]
                job = self.side.submit(lambda group_flights=group_flights: self._finish(group_flights))
                for flight in group_flights:
                    flight.pending = job
        # With nobody left to stall, wait for the side work instead of sending an empty chunk.
        while any(f.pending is not None for f in flights.values()) and not any(f.denoising for f in flights.values()):
            self._collect(flights, wait=True)
        self._collect(flights, wait=False)
        return call

    def render(self, call: Call) -> list[Reply]:
        """One Reply per row, in row order, each with its ``stop`` for TorchServe."""
        replies = []
        for row in range(call.size):
            if row in call.rejected:
                call.finals[row] = error_reply(call.rejected[row])
                replies.append(call.finals[row])  # stop=None: an ordinary response
            elif call.flights[row].done:
                replies.append(self._leave(call, row))
            else:
                replies.append(self._chunk(call, row))
        log.info(
            "call %d: %d row(s), %d joined, %d left, %d rejected, %d in flight, %d step(s), %.0f ms",
            call.number,
            call.size,
            sum(f.joined_call == call.number for f in call.flights.values()),
            len(call.finals) - len(call.rejected),
            len(call.rejected),
            len(self.flights),
            call.steps,
            (time.perf_counter() - call.started) * 1000,
        )
        return replies

    def metrics(self, call: Call, replies: list[Reply]) -> list[Observation]:
        finals = {
            row: (call.flights[row].request if row in call.flights else None, r) for row, r in call.finals.items()
        }
        return call_metrics(call.size, finals, call.timings, call.disconnected, self.service.gpu_memory_bytes())

    # -- side work: finishers ----------------------------------------------------------------------

    def _finish(self, flights: list[Flight]) -> dict[int, tuple[list[bytes] | BaseException, dict[str, float]]]:
        """Decode (one VAE call for the group; alone if that fails) and encode the images of ``flights``:
        per ``id(flight)``, its encoded images (or why there are none) and the stage timings."""
        started = time.perf_counter()
        states = [f.state for f in flights]
        self.side.share(*(s.latents for s in states))
        try:
            decoded = self.denoiser.decode(states)
        except Exception:  # decode them one by one: a failure stays with its request
            log.warning("decoding %d request(s) together failed; decoding alone", len(flights), exc_info=True)
            self.denoiser.free_memory()
            decoded = [self._decode_alone(state) for state in states]
        decoded_at = time.perf_counter()
        encoded = self.service.encode_images(
            {i: (f.request, d) for i, (f, d) in enumerate(zip(flights, decoded, strict=True)) if isinstance(d, list)}
        )
        timings = {
            "vae_decode": (decoded_at - started) * 1000,
            "encode_image": (time.perf_counter() - decoded_at) * 1000,
        }
        return {id(f): (encoded.get(i, d), timings) for i, (f, d) in enumerate(zip(flights, decoded, strict=True))}

    def _decode_alone(self, state: RequestState) -> list[Any] | BaseException:
        try:
            return self.denoiser.decode([state])[0]
        except Exception as exc:
            return exc

    def _collect(self, flights: dict[int, Flight], wait: bool) -> None:
        """Take in the side jobs that are done (with ``wait``: at least one, if any is pending)."""
        pending = {f.pending for f in flights.values() if f.pending is not None}
        if wait and pending:
            futures.wait(pending, return_when=futures.FIRST_COMPLETED)
        for flight in flights.values():
            job = flight.pending
            if job is None or not job.done():
                continue
            flight.pending = None
            flight.done = True
            try:
                flight.outcome, timings = job.result()[id(flight)]
                flight.timings_ms.update(timings)
            except Exception as exc:  # this request's error
                flight.outcome = exc

    # -- the shared step --------------------------------------------------------------------------

    def _step(self, call: Call, active: dict[int, Flight]) -> None:
        """One step for every active request: one UNet forward per size group; failures stay per request."""
        started = time.perf_counter()
        for flight in active.values():
            flight.denoise_started = flight.denoise_started or started
        groups = group_requests({row: f.request for row, f in active.items()}, self.settings.max_images_per_call)
        for group in groups:
            flights = [active[row] for row in group.rows]
            self._step_isolated(flights)
            for flight in flights:
                flight.shared_steps += len(flights) > 1
        now = time.perf_counter()
        for row, flight in active.items():
            state = flight.state
            if flight.done:  # failed in this step
                continue
            if state.finished:
                flight.timings_ms["denoise"] = (now - flight.denoise_started) * 1000
            elif flight.deadline is not None and now > flight.deadline:
                flight.done = True
                flight.outcome = TimeBudgetExceeded(
                    f"`timeout_s` of {flight.request.timeout_s} s ran out after step {state.step} of "
                    f"{state.total_steps}",
                    field="timeout_s",
                    value=flight.request.timeout_s,
                )
            if flight.request.stream and not flight.done:
                lines = call.events.setdefault(row, [])
                lines.append(progress_event(state))
                every = flight.request.preview_every
                if every and state.step % every == 0 and not state.finished:
                    lines.append(preview_event(state))

    def _step_isolated(self, flights: list[Flight]) -> None:
        """Step ``flights`` together; if that fails, in halves, down to one request alone, so that only the
        request that fails ALONE gets the error (out of memory -> 507, anything else -> 500)."""
        before = [f.state.step for f in flights]
        try:
            self.denoiser.step([f.state for f in flights])
            return
        except Exception as exc:
            if is_out_of_memory(exc):
                self.denoiser.free_memory()
            if len(flights) == 1:
                log.warning("request %s failed at step %d", flights[0].request_id, before[0], exc_info=True)
                flights[0].done = True
                flights[0].outcome = (
                    OutOfMemory(f"out of memory at step {before[0]} even alone: {exc}")
                    if is_out_of_memory(exc)
                    else exc
                )
                return
        # A failure after the UNet forward may have stepped some states already: retry only the others.
        pending = [f for f, step in zip(flights, before, strict=True) if f.state.step == step]
        half = max(1, len(pending) // 2)
        for part in (pending[:half], pending[half:]):
            if part:
                self._step_isolated(part)

    def _leave(self, call: Call, row: int) -> Reply:
        """The request's last reply (its images or its error); it leaves the loop."""
        flight = call.flights[row]
        del self.flights[flight.request_id]
        try:
            if isinstance(flight.outcome, BaseException):
                raise flight.outcome
            timings = {**flight.timings_ms, "total": (time.perf_counter() - flight.arrived) * 1000}
            call.timings[row] = timings
            batch_info = self._accounting(call, flight)
            outcome = self.service.success_reply(flight.request, flight.outcome, timings, batch_info)
        except Exception as exc:
            outcome = error_reply(exc)
        call.finals[row] = outcome
        events = b"".join(call.events.get(row, []))
        if flight.request.stream:
            final = SDXLService.as_final_event(outcome)
            reply = Reply(status=200, body=events + final.body, content_type=NDJSON)
        elif not flight.committed:
            reply = outcome  # nothing sent yet: the ordinary response, status and headers included
        elif outcome.status >= 400:
            error = json.loads(outcome.body)
            error["error"]["note"] = DEFERRED_NOTE
            reply = Reply(status=200, body=json.dumps(error).encode())
        else:
            reply = Reply(status=200, body=outcome.body, content_type=outcome.content_type)
        # First call: an ordinary (non-stream) response. Later: the stream's last chunk.
        reply.stop = True if flight.committed else None
        return reply

    def _chunk(self, call: Call, row: int) -> Reply:
        """A chunk for a request that goes on: progress lines (streamed) or nothing."""
        flight = call.flights[row]
        request = flight.request
        headers = {}
        if request.stream:
            content_type = NDJSON
        else:
            headers[DEFERRED_STATUS_HEADER] = "true"
            if request.response_format == "image":
                content_type = IMAGE_CONTENT_TYPES[request.output_format]
                headers["X-Seed"] = str(request.seed)
                headers["X-Parameters"] = json.dumps(request.parameters(), separators=(",", ":"))
            else:
                content_type = "application/json"
        first = not flight.committed
        flight.committed = True
        return Reply(
            status=200,
            body=b"".join(call.events.get(row, [])),
            content_type=content_type,
            headers=headers if first else {},  # only the first chunk's headers reach the client
            stop=False,
        )

    def _accounting(self, call: Call, flight: Flight) -> dict[str, Any]:
        """The ``batch`` section of a continuous reply: the handler's own record of how the request ran."""
        return {
            "scheduling": "continuous",
            "joined_call": flight.joined_call,
            "left_call": call.number,
            "in_flight_at_join": flight.in_flight_at_join,
            "shared_steps": flight.shared_steps,
            "steps_per_call": self.settings.steps_per_call,
        }
