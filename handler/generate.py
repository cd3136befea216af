"""Static batching: run one group of same-size requests to completion, sharing each step's UNet forward.

Requests may differ in prompts, seeds, step counts and guidance. A request leaves the loop as soon as it
is done (decoded with the others finishing at the same step) or its time budget runs out (504), and the
rest go on without it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .denoise import Denoiser, RequestState
from .errors import OutOfMemory, TimeBudgetExceeded, is_out_of_memory
from .schema import GenerationRequest

StepHook = Callable[[list[RequestState]], None]


@dataclass
class GroupResult:
    outcomes: list[list[Any] | BaseException]  # per request: its PIL images, or why it has none
    timings_ms: list[dict[str, float]] = field(default_factory=list)


def generate_group(
    denoiser: Denoiser,
    requests: list[GenerationRequest],
    on_step: StepHook | None = None,
    deadlines: list[float | None] | None = None,
) -> GroupResult:
    """Generate every image of ``requests`` (all the same size).

    Args:
        denoiser (`Denoiser`): the loaded pipeline's denoiser.
        requests (`list[GenerationRequest]`): seeds already resolved.
        on_step (`StepHook`, defaults to None): called after every step with the states that advanced.
        deadlines (`list[float | None]`, defaults to no deadlines): per request, a ``time.perf_counter()``
            instant after which it stops with :class:`TimeBudgetExceeded`.
    """
    deadlines = deadlines or [None] * len(requests)
    outcomes: list[list[Any] | BaseException | None] = [None] * len(requests)

    # 1. Every request's own state: prompts encoded once, seeded noise, own scheduler.
    states = [denoiser.start(request) for request in requests]
    index_of = {id(state): index for index, state in enumerate(states)}
    active = list(states)
    loop_started = time.perf_counter()

    # 2. Shared steps until every request has finished or run out of time.
    while active:
        denoiser.step(active)
        if on_step is not None:
            on_step(active)
        now = time.perf_counter()
        finished = [s for s in active if s.finished]
        expired = [s for s in active if not s.finished and _expired(deadlines[index_of[id(s)]], now)]
        for state in expired:
            request = state.request
            outcomes[index_of[id(state)]] = TimeBudgetExceeded(
                f"`timeout_s` of {request.timeout_s} s ran out after step {state.step} of {state.total_steps}",
                field="timeout_s",
                value=request.timeout_s,
            )
        if finished:
            denoised = time.perf_counter()
            for state, images in zip(finished, denoiser.decode(finished), strict=True):
                outcomes[index_of[id(state)]] = images  # PIL images, or why there are none
                state.timings_ms["denoise"] = (denoised - loop_started) * 1000
                state.timings_ms["vae_decode"] = (time.perf_counter() - denoised) * 1000
        active = [s for s in active if s not in finished and s not in expired]

    return GroupResult(outcomes=outcomes, timings_ms=[s.timings_ms for s in states])  # type: ignore[arg-type]


def generate_splitting(
    denoiser: Denoiser,
    requests: list[GenerationRequest],
    on_step: StepHook | None = None,
    deadlines: list[float | None] | None = None,
) -> GroupResult:
    """:func:`generate_group`, except that a group running out of memory is split in halves and retried,
    down to single requests: only a request that runs out of memory ALONE gets the error (507)."""
    deadlines = deadlines or [None] * len(requests)
    try:
        return generate_group(denoiser, requests, on_step, deadlines)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        denoiser.free_memory()
        if len(requests) == 1:
            error = OutOfMemory(f"out of memory generating this request even alone: {exc}")
            return GroupResult(outcomes=[error], timings_ms=[{}])
        half = len(requests) // 2
        first = generate_splitting(denoiser, requests[:half], on_step, deadlines[:half])
        second = generate_splitting(denoiser, requests[half:], on_step, deadlines[half:])
        return GroupResult(first.outcomes + second.outcomes, first.timings_ms + second.timings_ms)


def _expired(deadline: float | None, now: float) -> bool:
    return deadline is not None and now > deadline
