"""The one denoising engine behind both scheduling modes: admit, advance, expire, finish.

A request in the engine is a :class:`Flight`. :meth:`Engine.advance` runs shared steps over any set of flights:

    1. step     ONE UNet forward per image size per step (per-sample timesteps and guidance), so requests with
                different step counts, prompts and guidance share it
    2. isolate  a failing step is split in halves at the CURRENT step until the failing request is alone; only it
                gets the error (out of memory -> 507, anything else -> its own error), the others go on from
                where they were. After an out-of-memory split, later steps of that size keep to the rows that fit
    3. expire   a request past its ``timeout_s`` stops with a 504; the others go on
    4. finish   finished requests are VAE-decoded (together; alone if that fails) and encoded on the side worker

Static batching advances the whole TorchServe batch until it is empty, in one handler call; continuous
batching advances every request in flight by ``steps_per_call`` steps per call (:mod:`handler.runtime.core`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from concurrent.futures import Future
from typing import Any

from handler.contract.errors import OutOfMemory, TimeBudgetExceeded, is_out_of_memory
from handler.contract.request import GenerationRequest
from handler.contract.stages import Stage
from handler.model.denoise import Denoiser
from handler.model.request_state import RequestState
from handler.runtime.batching import Group, GroupKey, group_requests
from handler.runtime.flight import Flight, StepReport, step_report
from handler.runtime.side_work import SideWorker
from handler.runtime.step_policy import StepClock, StepPolicy, check_deadline

log = logging.getLogger(__name__)

# Encodes the images of several requests: key -> (request, PIL images) in, key -> bytes per image (or why not) out.
Encoder = Callable[[dict[Any, tuple[GenerationRequest, list[Any]]]], dict[Any, Any]]
StepHook = Callable[[list["Flight"]], None]


class Engine:
    """Runs flights on one pipeline's denoiser.

    Args:
        denoiser (`Denoiser`): prepares, steps and decodes requests.
        max_images_per_call (`int`): most images one UNet forward or VAE decode may take.
        side (`SideWorker`): runs the finishers' decode and encode (beside the steps, or inline).
        encode (`Encoder`, defaults to None): turns decoded images into bytes; None keeps the PIL images
            (in-process benchmarks).
        keep_images (`bool`, defaults to False): keep each request's decoded images beside the encoded ones
            (``Flight.images``), for an adapter that sends pixels (Triton).
        policy (`StepPolicy`, defaults to every flight every step): which flights take each step
            (:mod:`handler.runtime.step_policy`).
    """

    def __init__(
        self,
        denoiser: Denoiser,
        max_images_per_call: int,
        side: SideWorker,
        encode: Encoder | None = None,
        keep_images: bool = False,
        policy: StepPolicy | None = None,
    ):
        self.denoiser = denoiser
        self.max_images_per_call = max_images_per_call
        self.side = side
        self.encode = encode
        self.keep_images = keep_images
        # UNet rows per forward that fit, per image size, learned from out-of-memory splits; forgotten when the
        # engine is empty (memory was freed).
        self.row_caps: dict[GroupKey, int] = {}
        self.in_flight: set[Flight] = set()  # admitted, not yet finished or aborted
        self.policy = policy or StepPolicy()
        self.clock = StepClock()  # seconds per shared step by rows: deadline estimates and the slack policy

    def admit(self, request: GenerationRequest, key: str, arrived: float, **details: Any) -> Flight:
        """Prepare a request (conditioning, its own scheduler, seeded noise): it takes its first step next. An
        init image is VAE-encoded on the side worker (beside the steps when it overlaps): it joins when done."""
        check_deadline(request, arrived, self.clock.estimate(self._rows_with(request)))
        names = [name for name, _ in request.loras]
        if names:
            self.denoiser.loras.acquire(names)  # loaded (first use) and pinned until it leaves
        try:
            state = self.denoiser.start(request)
        except BaseException:
            self._unpin(request)
            raise
        flight = Flight(key, state, arrived, **details)
        flight.timings_ms[Stage.ENCODE_PROMPT] = state.timings_ms[Stage.ENCODE_PROMPT]
        if state.latents is None:
            flight.preparing = self.side.submit(lambda: self._prepare(state))
        self.in_flight.add(flight)
        return flight

    def finish(self, flight: Flight) -> None:
        """A request's last reply went out: it leaves the engine."""
        self._leave(flight)

    def abort(self, flight: Flight) -> None:
        """A request's client left: its side work is canceled and it leaves the engine wherever it was."""
        for job in (flight.preparing, flight.pending):
            if job is not None:
                job.cancel()
        self._leave(flight)

    def _leave(self, flight: Flight) -> None:
        if flight in self.in_flight:
            self.in_flight.discard(flight)
            self._unpin(flight.request)
        if not self.in_flight:
            self.row_caps.clear()

    def _unpin(self, request: GenerationRequest) -> None:
        """Its LoRAs may be evicted again."""
        if request.loras:
            self.denoiser.loras.release([name for name, _ in request.loras])

    def _prepare(self, state: RequestState) -> RequestState:
        self.denoiser.prepare_latents(state)
        self.side.share(*(t for t in (state.latents, state.unet_extra) if t is not None))
        return state

    def advance(self, flights: Iterable[Flight], max_steps: int | None = None, on_step: StepHook | None = None) -> int:
        """Run up to ``max_steps`` shared steps (None: until none is left denoising), hand the finishers to the
        side worker and take in the side work that is done. Returns the steps run.

        ``on_step`` is called after every step with the flights that took it."""
        flights = list(flights)
        steps = 0
        while max_steps is None or steps < max_steps:
            self._join_prepared(flights, wait=False)
            active = [f for f in flights if f.denoising]
            if not active:
                if not any(f.preparing is not None for f in flights):
                    break
                self._join_prepared(flights, wait=True)  # nothing to step until an image is encoded
                continue
            rows = sum(f.state.unet_rows for f in active)
            chosen = self.policy.choose(active, time.perf_counter(), self.clock.estimate(self._budgeted(rows)))
            for flight in chosen:
                flight.waiting = False
            self._step(chosen)
            self._park([f for f in active if f not in chosen])
            steps += 1
            if on_step is not None:
                on_step(chosen)
            self._hand_over([f for f in chosen if not f.done and f.state.finished])
        # With nobody left to stall, wait for the side work instead of returning with nothing done.
        while any(f.pending is not None for f in flights) and not any(f.denoising or f.preparing for f in flights):
            self._collect(flights, wait=True)
        self._collect(flights, wait=False)
        return steps

    def close(self) -> None:
        """Stop the side worker (its thread and CUDA stream); the engine takes no more requests."""
        self.side.shutdown()

    def generate(self, requests: list[GenerationRequest]) -> list[list[Any] | BaseException]:
        """Run ``requests`` together to the end: per request, its images or why it has none (warmup, benchmarks)."""
        now = time.perf_counter()
        flights = [self.admit(request, str(i), now) for i, request in enumerate(requests)]
        self.advance(flights)
        for flight in flights:
            self.finish(flight)
        return [flight.outcome for flight in flights]  # type: ignore[misc]

    def groups(self, flights: dict[Any, Flight]) -> list[Group]:
        """The flights that share each step's UNet forward: the same size, the same UNet (base or refiner
        stage), and the same LoRA set where PEFT must apply it to the whole forward."""

        def partition(key: Any) -> tuple:
            state = flights[key].state
            return (state.model, *self.denoiser.whole_forward_adapters(state.request))

        return group_requests({k: f.request for k, f in flights.items()}, self.max_images_per_call, partition)

    # -- 1-3: the shared step -----------------------------------------------------------------------

    def _step(self, active: list[Flight]) -> None:
        started = time.perf_counter()
        for flight in active:
            flight.denoise_started = flight.denoise_started or started
        by_id = {id(f): f for f in active}
        for group in self.groups(by_id):
            members = [by_id[key] for key in group.rows]
            for part in self._within_cap(group.key, members):
                self._step_isolated(group.key, part)
            for flight in members:
                flight.shared_steps += len(members) > 1
        now = time.perf_counter()
        self.clock.record(sum(f.state.unet_rows for f in active), now - started)
        for flight in active:
            state = flight.state
            if flight.done:  # failed in this step
                continue
            if state.finished:
                flight.timings_ms[Stage.DENOISE] = (now - flight.denoise_started) * 1000
            else:
                self._expire(flight, now)
            if flight.request.stream and not flight.done:
                flight.reports.append(step_report(state))

    def _rows_with(self, request: GenerationRequest) -> int:
        """UNet rows a step will take once ``request`` joins those in flight (within the step budget)."""
        own = request.num_images_per_prompt * (2 if request.guidance_scale > 1 else 1)
        in_flight = sum(f.state.unet_rows for f in self.in_flight if not f.done and not f.state.finished)
        return max(own, self._budgeted(in_flight + own))

    def _budgeted(self, rows: int) -> int:
        return rows if self.policy.max_rows is None else min(rows, self.policy.max_rows)

    def _park(self, parked: list[Flight]) -> None:
        """Flights the policy left out of this step wait where they are; their time budget still runs."""
        now = time.perf_counter()
        for flight in parked:
            if flight.request.stream and not flight.waiting:
                state = flight.state
                flight.reports.append(StepReport(state.step, state.total_steps, now - state.started, parked=True))
            flight.parked_steps += 1
            flight.waiting = True
            self._expire(flight, now)

    def _expire(self, flight: Flight, now: float) -> None:
        if flight.deadline is not None and now > flight.deadline:
            flight.fail(
                TimeBudgetExceeded(
                    f"`timeout_s` of {flight.request.timeout_s} s ran out after step {flight.state.step} of "
                    f"{flight.state.total_steps}",
                    field="timeout_s",
                    value=flight.request.timeout_s,
                )
            )

    def _within_cap(self, key: GroupKey, flights: list[Flight]) -> list[list[Flight]]:
        """``flights`` in consecutive parts of at most the learned row cap (at least one flight per part)."""
        cap = self.row_caps.get(key)
        if cap is None:
            return [flights]
        parts: list[list[Flight]] = [[]]
        rows = 0
        for flight in flights:
            if parts[-1] and rows + flight.state.unet_rows > cap:
                parts.append([])
                rows = 0
            parts[-1].append(flight)
            rows += flight.state.unet_rows
        return parts

    def _step_isolated(self, key: GroupKey, flights: list[Flight]) -> None:
        """Step ``flights`` together; if that fails, in halves, down to one request alone."""
        before = [f.state.step for f in flights]
        try:
            self.denoiser.step([f.state for f in flights])
            return
        except Exception as exc:
            out_of_memory = is_out_of_memory(exc)
            if out_of_memory:
                self.denoiser.free_memory()
            if len(flights) == 1:
                log.warning("request %s failed at step %d", flights[0].key, before[0], exc_info=True)
                error = OutOfMemory(f"out of memory at step {before[0]} even alone: {exc}") if out_of_memory else exc
                flights[0].fail(error)
                return
            if out_of_memory:
                rows = sum(f.state.unet_rows for f in flights)
                self.row_caps[key] = min(self.row_caps.get(key, rows), max(1, rows // 2))
                log.warning("out of memory at %d UNet rows of %s: at most %d from now", rows, key, self.row_caps[key])
        # A failure after the UNet forward may have stepped some states already: retry only the others.
        pending = [f for f, step in zip(flights, before, strict=True) if f.state.step == step]
        half = max(1, len(pending) // 2)
        for part in (pending[:half], pending[half:]):
            if part:
                self._step_isolated(key, part)

    def _join_prepared(self, flights: list[Flight], wait: bool) -> None:
        """Flights whose first latents are ready start denoising (with ``wait``: at least one, if any)."""
        for flight, job in self._finished_jobs(flights, "preparing", wait):
            try:
                job.result()
            except Exception as exc:  # this request's error
                log.warning("request %s: preparing its latents failed", flight.key, exc_info=True)
                flight.fail(exc)
                continue
            if Stage.VAE_ENCODE in flight.state.timings_ms:
                flight.timings_ms[Stage.VAE_ENCODE] = flight.state.timings_ms[Stage.VAE_ENCODE]

    @staticmethod
    def _finished_jobs(flights: list[Flight], kind: str, wait: bool) -> list[tuple[Flight, Future]]:
        """The flights whose side job of ``kind`` (``preparing`` or ``pending``) is done, with it, each taken off
        its flight; with ``wait``, after at least one is done (if any is running)."""
        running = {getattr(f, kind) for f in flights if getattr(f, kind) is not None}
        if wait and running:
            futures.wait(running, return_when=futures.FIRST_COMPLETED)
        finished = []
        for flight in flights:
            job = getattr(flight, kind)
            if job is not None and job.done():
                setattr(flight, kind, None)
                finished.append((flight, job))
        return finished

    # -- 4: finishing, on the side worker -----------------------------------------------------------

    def _hand_over(self, finished: list[Flight]) -> None:
        by_id = {id(f): f for f in finished}
        for group in group_requests({id(f): f.request for f in finished}, self.max_images_per_call):
            members = [by_id[key] for key in group.rows]
            job = self.side.submit(lambda members=members: self._finish(members))
            for flight in members:
                flight.pending = job

    def _finish(self, flights: list[Flight]) -> dict[int, tuple[Any, dict[str, float]]]:
        """Decode (one VAE call for the group; alone if that fails) and encode the images of ``flights``:
        per ``id(flight)``, its images (or why there are none) and the stage timings."""
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
        timings = {Stage.VAE_DECODE: (decoded_at - started) * 1000}
        pictures = decoded if self.keep_images else [None] * len(decoded)
        if self.encode is not None:
            images = {i: (f.request, d) for i, (f, d) in enumerate(zip(flights, decoded, strict=True))}
            encoded = self.encode({i: item for i, item in images.items() if isinstance(item[1], list)})
            decoded = [encoded.get(i, d) for i, d in enumerate(decoded)]
            timings[Stage.ENCODE_IMAGE] = (time.perf_counter() - decoded_at) * 1000
        return {id(f): (d, timings, p) for f, d, p in zip(flights, decoded, pictures, strict=True)}

    def _decode_alone(self, state: RequestState) -> list[Any] | BaseException:
        try:
            return self.denoiser.decode([state])[0]
        except Exception as exc:
            return exc

    def _collect(self, flights: list[Flight], wait: bool) -> None:
        """Take in the side jobs that are done (with ``wait``: at least one, if any is pending)."""
        for flight, job in self._finished_jobs(flights, "pending", wait):
            flight.done = True
            try:
                flight.outcome, timings, pictures = job.result()[id(flight)]
                flight.images = pictures if isinstance(pictures, list) else None
                flight.timings_ms.update(timings)
            except Exception as exc:  # this request's error
                flight.outcome = exc
