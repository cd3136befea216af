"""A pending job's estimated time, from the service's recent completions.

The rate is measured over the time the service was BUSY (the union of the recent jobs' run intervals), not over
the wall clock, so it does not decay while the service idles: after an idle hour, the next burst is quoted what
the last one took. The number of jobs that run at once (the dispatchers' slots, filled into TorchServe's
batches) follows from Little's law, ``slots = rate x mean run``. A job at ``queue_position`` p, with R jobs
running, starts at once while a slot is free (p < slots - R) and otherwise after the p - (slots - R) + 1 next
completions; then it runs for the mean run time.
"""

from __future__ import annotations

from dataclasses import dataclass

RECENT = 50  # completions an estimate is made from (Redis keeps twice as many)


@dataclass(frozen=True)
class ServiceRate:
    jobs_per_s: float  # while busy
    mean_run_s: float
    slots: int  # jobs that ran at once

    @classmethod
    def of(cls, completions: list[tuple[float, float]]) -> ServiceRate | None:
        """From ``(finished_at, run_s)`` of recent jobs; None before any finished."""
        if not completions:
            return None
        intervals = sorted((finished - run, finished) for finished, run in completions)
        busy, start, end = 0.0, *intervals[0]
        for low, high in intervals[1:]:
            if low > end:
                busy, start = busy + end - start, low
            end = max(end, high)
        busy += end - start
        mean_run = sum(run for _, run in completions) / len(completions)
        rate = len(completions) / max(busy, mean_run, 1e-3)
        return cls(rate, mean_run, max(1, round(rate * mean_run)))

    def estimate(self, position: int, running: int) -> float:
        """Seconds until the job at ``position`` (0: next) finishes, with ``running`` jobs running now."""
        free = max(self.slots - running, 0)
        waits = 0.0 if position < free else (position - free + 1) / self.jobs_per_s
        return waits + self.mean_run_s

    def drain_s(self, queued: int, running: int) -> float:
        """Seconds until the last of ``queued`` jobs finishes (0 when none)."""
        return self.estimate(queued - 1, running) if queued else 0.0


ETA_MODEL = (
    "estimated_time = mean_run_s, or with no slot free (queue_position - free_slots + 1) / throughput + "
    f"mean_run_s; throughput over the busy time of the last {RECENT} jobs, slots = throughput x mean_run_s"
)
