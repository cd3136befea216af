"""SAQ's Redis queue, with the three things a GPU job queue needs that SAQ's defaults do not do.

SAQ gives reliable delivery (BLMOVE queued -> active), heartbeats, sweeps of jobs whose dispatcher died, abort
of queued and running jobs and retries. On top of it:

1. A job that goes back (its dispatcher died, or drained on SIGTERM) goes to the HEAD of the queue, not the tail:
   it was the oldest, and its client has waited longest.
2. A draining dispatcher takes nothing more: a job its idle slots dequeue after SIGTERM goes straight back to the
   head of the queue.
3. Every requeue and every end SAQ decides (a sweep, an abort) is mirrored into the job's record (state.py), so
   GET /jobs/{id} says ``pending`` again with the next attempt, or ``failed`` when the attempts are used up.
"""

from __future__ import annotations

from typing import Any

from saq import Job, Status
from saq.queue.redis import RedisQueue
from saq.utils import now

from .state import JobState

GENERATE = "generate"  # the dispatcher's job function
SWEPT = "swept"  # SAQ's error for a job whose dispatcher stopped heartbeating


class JobQueue(RedisQueue):
    """The queue of generation jobs; ``state`` receives the mirrored status changes."""

    def __init__(self, redis: Any, name: str, state: JobState):
        super().__init__(redis, name=name, swept_error_message=SWEPT)
        self.state = state
        self.draining = False

    @property
    def queued_list(self) -> str:
        return self._queued

    @property
    def active_list(self) -> str:
        return self._active

    async def position(self, job_id: str) -> int | None:
        """0 for the next job a dispatcher takes; None when the job is not waiting."""
        return await self.redis.lpos(self._queued, self.job_id(job_id))

    async def depth(self) -> tuple[int, int]:
        """(pending, running) jobs."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.llen(self._queued)
            pipe.llen(self._active)
            queued, active = await pipe.execute()
        return queued, active

    async def sweep(self, lock: int = 60, abort: float = 5.0) -> list[str]:
        """Put back the running jobs whose dispatcher went silent (no heartbeat for ``heartbeat`` s, or past
        their ``timeout``); with no attempts left, fail them.

        Replaces SAQ's sweep, which also takes any job in the active list whose status is not yet ``active``:
        a job another dispatcher dequeued a moment ago (BLMOVE, then the status write) was swept as dead.
        """
        if not await self.redis.set(self._sweep, 1, nx=True, ex=max(int(lock), 1)):
            return []  # another dispatcher sweeps this round
        swept = []
        for job_id in await self.redis.lrange(self._active, 0, -1):
            job = await self._get_job_by_id(job_id)
            if job is None:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.lrem(self._active, 0, job_id)
                    pipe.zrem(self._incomplete, job_id)
                    await pipe.execute()
                continue
            if not _silent(job):
                continue
            swept.append(job.key)
            await self.redis.setex(job.abort_id, max(int(abort), 1), SWEPT)  # in case it is only slow
            if job.retryable:
                await self.retry(job, SWEPT)
            else:
                await self.finish(job, Status.ABORTED, error=SWEPT)
        return swept

    async def dequeue(self, timeout: float = 0.0, poll_interval: float = 0.0) -> Job | None:
        job = await super().dequeue(timeout, poll_interval)
        if job is not None and self.draining:
            await self._back_to_head(job)
            return None
        return job

    async def _retry(self, job: Job, error: str | None) -> None:
        if job.next_retry_delay():
            await super()._retry(job, error)
        else:
            await self._back_to_head(job)
        await self.state.transition(job.key, "pending", attempt=job.attempts, requeued=error or "")

    async def _back_to_head(self, job: Job) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrem(self._active, 1, job.id)
            pipe.lrem(self._queued, 1, job.id)
            pipe.zadd(self._incomplete, {job.id: job.scheduled})
            pipe.lpush(self._queued, job.id)
            pipe.set(job.id, self.serialize(job))
            await pipe.execute()
        await self.notify(job)

    async def _finish(self, job: Job, status: Status, *, result: Any = None, error: str | None = None) -> None:
        await super()._finish(job, status, result=result, error=error)
        if status == Status.ABORTED and error == SWEPT:
            message = f"the dispatcher running this job stopped responding on each of {job.attempts} attempts"
            await self.state.transition(job.key, "failed", error={"code": 503, "message": message})
        elif status == Status.ABORTED:
            await self.state.transition(job.key, "canceled")
        elif status == Status.FAILED:  # SAQ's error is a traceback: the client sees its exception type only
            lines = [line for line in (error or "").splitlines() if line.strip()]
            kind = lines[-1].split(":", 1)[0].strip()[:80] if lines else "error"
            message = f"the dispatcher failed on this job ({kind}); its log has the details"
            await self.state.transition(
                job.key, "failed", error={"code": 500, "type": "DispatcherError", "message": message}
            )


def _silent(job: Job) -> bool:
    """No heartbeat for ``job.heartbeat`` s (SAQ's times are ms), or running past ``job.timeout``."""
    current = now()
    last = max(job.touched, job.started, job.queued)
    return bool(
        (job.heartbeat and current - last > job.heartbeat * 1000)
        or (job.timeout and job.started and current - job.started > job.timeout * 1000)
    )
