"""A request in the engine: its denoising state and everything around it (arrival, side jobs, stream lines not
sent yet, the outcome and timings) until its last reply."""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from handler.contract.request import GenerationRequest
from handler.model.request_state import RequestState


@dataclass(frozen=True)
class StepReport:
    """What a streamed request hears after one of its steps, as data; wire/encode.py renders it (a progress
    line, and a preview decoded from ``preview_latents`` when it is a preview step)."""

    step: int
    total_steps: int
    elapsed_s: float
    preview_latents: Any = None  # this step's latents, on preview steps only
    parked: bool = False  # not a step taken: the step policy left the request out from this step on


def step_report(state: RequestState) -> StepReport:
    """The report of ``state``'s latest step (a preview every ``preview_every`` steps, none after the last:
    the result follows)."""
    every = state.request.preview_every
    preview = every and state.step % every == 0 and not state.finished
    return StepReport(
        step=state.step,
        total_steps=state.total_steps,
        elapsed_s=time.perf_counter() - state.started,
        preview_latents=state.latents.clone() if preview else None,  # the next step makes new latents anyway
    )


@dataclass(eq=False)  # identity: two flights may hold equal requests yet be separate
class Flight:
    """One request in the engine, from admission until its outcome is known.

    Its life: preparing (an init image's VAE encode, on the side worker) -> denoising (stepped with the others)
    -> finishing (decode + encode, on the side worker) -> done (``outcome`` set).
    """

    key: str  # the request id that identifies it across handler calls
    state: RequestState
    arrived: float  # time.perf_counter() at its first handler call: its time budget counts from here
    joined_call: int = 0
    in_flight_at_join: int = 0  # requests already in the engine when it joined
    group: dict[str, int] | None = None  # static batching: the size group it was admitted in
    preparing: Future | None = None  # its first latents' job on the side worker (the VAE encoder)
    pending: Future | None = None  # its finish job on the side worker
    committed: bool = False  # bytes went out (HTTP 200 and headers sent): its last reply is a stream's end
    shared_steps: int = 0  # steps whose UNet forward it shared with other requests
    parked_steps: int = 0  # steps the step policy left it out of (handler.runtime.step_policy)
    waiting: bool = False  # parked at the last step (a streamed request hears it once per wait)
    denoise_started: float | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    reports: list[StepReport] = field(default_factory=list)  # streamed steps not sent yet
    done: bool = False
    outcome: list[Any] | BaseException | None = None  # its (encoded) images, or why it has none
    images: list[Any] | None = None  # its decoded images too, for an adapter that sends pixels (keep_images)

    @property
    def request(self) -> GenerationRequest:
        return self.state.request

    @property
    def deadline(self) -> float | None:
        timeout = self.request.timeout_s
        return None if timeout is None else self.arrived + timeout

    @property
    def denoising(self) -> bool:
        return self.preparing is None and self.pending is None and not self.done and not self.state.finished

    def fail(self, error: BaseException) -> None:
        self.done, self.outcome = True, error
