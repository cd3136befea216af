"""Which requests in flight take the next step, when the step budget cannot take them all.

The engine advances requests step by step, so at every step boundary it may choose: with ``max_rows_per_step``
set and more UNet rows in flight than that, the policy ranks the flights and the best take the step (filling
the budget in rank order; at least one always does); the others are parked: their latents, scheduler state and
generators stay as they are, and they resume at the same step, so their images do not change.

Rankings (smaller first; ties by arrival):
    fifo      arrival
    priority  ``priority`` plus one level per ``priority_aging_s`` waited (nothing starves), then arrival
    edf       the earliest deadline (arrival + ``deadline_s``; none: last), then priority
    slack     least time to spare: deadline - now - remaining steps x the measured step time, then priority
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from handler.contract.errors import DeadlineUnreachable
from handler.contract.settings import STEP_POLICIES


@dataclass(frozen=True)
class StepPolicy:
    """Args:
    name (`str`, defaults to "fifo"): one of :data:`handler.contract.settings.STEP_POLICIES`.
    max_rows (`int`, defaults to None): UNet rows per step over all groups; None steps every flight.
    aging_s (`float`, defaults to 30): seconds of waiting worth one priority level.
    """

    name: str = "fifo"
    max_rows: int | None = None
    aging_s: float = 30.0

    def __post_init__(self) -> None:
        if self.name not in STEP_POLICIES:
            raise ValueError(f"step policy must be one of {STEP_POLICIES} but is {self.name!r}")

    def choose(self, active: list[Any], now: float, step_s: float | None) -> list[Any]:
        """The flights of ``active`` (in its order) that take the next step.

        Args:
            active (`list[Flight]`): the flights ready to step.
            now (`float`): the clock (``time.perf_counter()``), against the flights' ``arrived``.
            step_s (`float`, defaults to None): the measured seconds per step (slack), None before any.
        """
        if self.max_rows is None or sum(f.state.unet_rows for f in active) <= self.max_rows:
            return active
        chosen: set[int] = set()
        rows = 0
        for flight in sorted(active, key=lambda f: self.rank(f, now, step_s)):
            if not chosen or rows + flight.state.unet_rows <= self.max_rows:
                chosen.add(id(flight))
                rows += flight.state.unet_rows
        return [f for f in active if id(f) in chosen]

    def rank(self, flight: Any, now: float, step_s: float | None) -> tuple:
        arrival = (flight.arrived, flight.key)
        if self.name == "fifo":
            return arrival
        level = flight.request.priority + max(0.0, now - flight.arrived) / self.aging_s
        if self.name == "priority":
            return (-level, *arrival)
        deadline_s = flight.request.deadline_s
        target = math.inf if deadline_s is None else flight.arrived + deadline_s
        if self.name == "edf":
            return (target, -level, *arrival)
        remaining = (flight.state.total_steps - flight.state.step) * (step_s or 0.0)
        return (target - now - remaining, -level, *arrival)


class StepClock:
    """Seconds per shared step by the UNet rows it stepped, a moving average per row count: what a step will
    take with so many rows (interpolated between known counts; beyond the largest, proportionally; below the
    smallest, as the smallest). Keyed by rows, so that a burst's slow steps do not stand for an idle server's;
    a count not stepped for ``max_age_s`` is forgotten, so refusals made on an estimate cannot outlive it (a
    refused request steps nothing that would correct it)."""

    def __init__(self, smoothing: float = 0.2, max_age_s: float = 60.0):
        self.smoothing, self.max_age_s = smoothing, max_age_s
        self.by_rows: dict[int, tuple[float, float]] = {}  # rows -> (seconds, when recorded)

    def record(self, rows: int, seconds: float, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        known = self.by_rows.get(rows)
        average = seconds if known is None else (1 - self.smoothing) * known[0] + self.smoothing * seconds
        self.by_rows[rows] = (average, now)

    def estimate(self, rows: int, now: float | None = None) -> float | None:
        """Seconds for one step of ``rows`` rows; None with nothing recent to go by."""
        now = time.perf_counter() if now is None else now
        known = {r: seconds for r, (seconds, at) in self.by_rows.items() if now - at <= self.max_age_s}
        if not known:
            return None
        if rows in known:
            return known[rows]
        below = max((r for r in known if r < rows), default=None)
        above = min((r for r in known if r > rows), default=None)
        if below is None:
            return known[above]
        if above is None:
            return known[below] * rows / below
        share = (rows - below) / (above - below)
        return known[below] + share * (known[above] - known[below])


def check_deadline(request: Any, arrived: float, step_s: float | None) -> None:
    """Refuse, before any work, a request whose ``deadline_s`` its steps at ``step_s`` each miss (the
    :class:`StepClock`'s estimate for the rows that will step with it; None before the first step: nothing to
    refuse on).

    Raises:
        DeadlineUnreachable: 503, with the estimate as ``Retry-After``.
    """
    if request.deadline_s is None or step_s is None:
        return
    steps = request.denoising_steps
    estimate = (time.perf_counter() - arrived) + steps * step_s
    if estimate > request.deadline_s:
        raise DeadlineUnreachable(
            f"`deadline_s` of {request.deadline_s:g} s cannot be met: {steps} steps at the current "
            f"{step_s * 1000:.0f} ms per step take about {estimate:.1f} s",
            field="deadline_s",
            value=request.deadline_s,
            retry_after_s=estimate,
        )
