"""Job state in Redis, beside SAQ's queue: one hash per job (the API's view), a Redis Stream per job (its event
log, resumable), idempotency keys, per-key open sets and cluster-wide statistics.

SAQ owns delivery (queued/active lists, heartbeats, sweeps, aborts); this module owns what a client sees. Every
status change goes through :meth:`JobState.transition`, one Lua script: a finished job (completed, failed,
canceled) never changes again, whoever writes late (a swept dispatcher, a cancel racing a completion).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from redis.asyncio import Redis

from handler.wire.events import PROGRESS, STATUS

from .eta import RECENT, ServiceRate
from .state_scripts import SUBMIT, TRANSITION, WITHDRAW

TERMINAL = ("completed", "failed", "canceled")
STATUSES = ("pending", "processing", *TERMINAL, "expired")
# Seconds; the queue-wait and run-time histograms on /metrics.
BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
EVENTS_MAXLEN = 2000  # per job: a 100-step job with previews is ~210 events

RECENT_JOBS = 50  # per key, for GET /jobs


class SubmitRefused(Exception):
    """A cap refused the submit: ``reason`` is "queue_full" (with ``pending``) or "key_full"."""

    def __init__(self, reason: str, pending: int = 0):
        super().__init__(reason)
        self.reason, self.pending = reason, pending


class JobState:
    """The job API's Redis keys (prefix ``sdxl:``) and the operations on them.

    Args:
        redis (`redis.asyncio.Redis`): a client with ``decode_responses=False``.
        result_ttl_s (`int`): how long a finished job's events are kept (its image too, by the store).
        expired_record_ttl_s (`int`): how long after that the job still answers ``expired``.
    """

    def __init__(self, redis: Redis, result_ttl_s: int, expired_record_ttl_s: int):
        self.redis = redis
        self.result_ttl_s = result_ttl_s
        self.expired_record_ttl_s = expired_record_ttl_s
        self._transition = redis.register_script(TRANSITION)
        self._submit = redis.register_script(SUBMIT)
        self._withdraw = redis.register_script(WITHDRAW)
        self.on_finished = None  # async (job_id, status) -> None, after a job's one terminal transition

    # -- keys -----------------------------------------------------------------------------------------

    @staticmethod
    def record_key(job_id: str) -> str:
        return f"sdxl:job:{job_id}"

    @staticmethod
    def body_key(job_id: str) -> str:
        return f"sdxl:body:{job_id}"

    @staticmethod
    def events_key(job_id: str) -> str:
        return f"sdxl:events:{job_id}"

    @staticmethod
    def open_key(owner: str) -> str:
        return f"sdxl:open:{owner}"

    @staticmethod
    def recent_key(owner: str) -> str:
        return f"sdxl:recent:{owner}"

    @staticmethod
    def idempotency_key(owner: str, client_key: str) -> str:
        return f"sdxl:idem:{owner}:{hashlib.sha256(client_key.encode()).hexdigest()}"

    STATS = "sdxl:stats"
    PENDING = "sdxl:pending"  # records of pending jobs, all keys: the overall cap
    DONE = "sdxl:done"  # zset of (finished_at, run_s) by finish time: the service rate behind estimated_time

    # -- writes ---------------------------------------------------------------------------------------

    def _submit_keys(self, job_id: str, owner: str, idempotency: str | None) -> list[str]:
        return [
            idempotency or "sdxl:idem:none",
            self.open_key(owner),
            self.record_key(job_id),
            self.body_key(job_id),
            self.events_key(job_id),
            self.STATS,
            self.PENDING,
            self.recent_key(owner),
        ]

    async def create(
        self,
        job_id: str,
        owner: str,
        body: bytes,
        fields: dict[str, Any],
        *,
        max_pending: int,
        max_open: int,
        idempotency: tuple[str, str] | None = None,
        idempotency_ttl_s: int = 86400,
    ) -> str | None:
        """Record a new pending job (before SAQ enqueues it, so a dispatcher always finds its record), in one
        atomic step with the caps and the Idempotency-Key claim.

        Args:
            idempotency (`tuple[str, str]`, defaults to None): (the claim's Redis key, the request's fingerprint).

        Returns:
            None when the job was created; else the claim ``"<job id> <fingerprint>"`` already held.

        Raises:
            SubmitRefused: a cap is reached (nothing was written).
        """
        record = {"id": job_id, "owner": owner, "status": "pending", "created_at": repr(time.time()), "attempt": "0"}
        record.update({name: _text(value) for name, value in fields.items()})
        pairs = [item for pair in record.items() for item in pair]
        claim_key, fingerprint = idempotency or (None, "")
        verdict, detail = await self._submit(
            keys=self._submit_keys(job_id, owner, claim_key),
            args=[
                "1" if claim_key else "0",
                f"{job_id} {fingerprint}",
                idempotency_ttl_s,
                max_open,
                max_pending,
                body,
                json.dumps({"status": "pending", "attempt": 0}),
                EVENTS_MAXLEN,
                time.time(),
                RECENT_JOBS,
                job_id,
                STATUS,
                *pairs,
            ],
        )
        verdict, detail = verdict.decode(), detail.decode()
        if verdict == "replay":
            return detail
        if verdict != "created":
            raise SubmitRefused(verdict, int(detail or 0))
        return None

    async def withdraw(self, job_id: str, owner: str, idempotency: tuple[str, str] | None = None) -> None:
        """Undo :meth:`create` for a job whose SAQ job could not be queued."""
        claim_key, fingerprint = idempotency or (None, "")
        await self._withdraw(
            keys=self._submit_keys(job_id, owner, claim_key),
            args=[f"{job_id} {fingerprint}" if claim_key else "", job_id],
        )

    async def transition(self, job_id: str, status: str, **fields: Any) -> bool:
        """Move a job to ``status`` (with ``fields`` on its record and a ``status`` event); False when the job
        was already finished or is gone."""
        owner = await self.redis.hget(self.record_key(job_id), "owner")
        if owner is None:
            return False
        terminal = status in TERMINAL
        if terminal:
            fields.setdefault("finished_at", time.time())
        texts = {name: _text(value) for name, value in fields.items()}
        event = json.dumps({"status": status, **{k: _jsonable(v) for k, v in fields.items()}})
        pairs = [item for pair in texts.items() for item in pair]
        done = await self._transition(
            keys=[
                self.record_key(job_id),
                self.events_key(job_id),
                self.open_key(owner.decode()),
                self.STATS,
                self.body_key(job_id),
                self.PENDING,
            ],
            args=[
                event,
                status,
                "1" if terminal else "0",
                self.result_ttl_s + self.expired_record_ttl_s,
                self.result_ttl_s,
                EVENTS_MAXLEN,
                STATUS,
                *pairs,
            ],
        )
        if done == 1 and terminal and self.on_finished is not None:
            await self.on_finished(job_id, status)
        return done == 1

    async def progress(self, job_id: str, event: dict[str, Any]) -> None:
        """A dispatcher's progress/preview event: into the log, and the latest step onto the record."""
        async with self.redis.pipeline(transaction=False) as pipe:
            if event.get("event") == PROGRESS:
                pipe.hset(
                    self.record_key(job_id),
                    mapping={
                        "step": event.get("step", 0),
                        "total_steps": event.get("total_steps", 0),
                        "eta_s": event.get("eta_s", 0),
                    },
                )
            data = {k: v for k, v in event.items() if k != "event"}
            pipe.xadd(
                self.events_key(job_id),
                {"event": event.get("event", PROGRESS), "data": json.dumps(data)},
                maxlen=EVENTS_MAXLEN,
            )
            await pipe.execute()

    async def observe(self, name: str, seconds: float) -> None:
        """One observation of the ``wait`` or ``run`` histogram (cluster-wide, in Redis)."""
        bucket = next((str(b) for b in BUCKETS if seconds <= b), "+Inf")
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(f"sdxl:hist:{name}", bucket, 1)
            pipe.hincrbyfloat(f"sdxl:hist:{name}", "sum", seconds)
            pipe.hincrby(f"sdxl:hist:{name}", "count", 1)
            if name == "run":
                now = time.time()
                pipe.zadd(self.DONE, {f"{now}:{seconds}": now})
                pipe.zremrangebyrank(self.DONE, 0, -2 * RECENT - 1)  # the last ones, however old
            await pipe.execute()

    # -- reads ----------------------------------------------------------------------------------------

    async def record(self, job_id: str) -> dict[str, str] | None:
        raw = await self.redis.hgetall(self.record_key(job_id))
        return {k.decode(): v.decode() for k, v in raw.items()} if raw else None

    async def body(self, job_id: str) -> bytes | None:
        return await self.redis.get(self.body_key(job_id))

    async def events(self, job_id: str, after: str = "0-0", block_ms: int | None = None) -> list[tuple[str, str, Any]]:
        """Events after stream id ``after`` as (id, event, data); ``block_ms`` waits for the next ones."""
        reply = await self.redis.xread({self.events_key(job_id): after}, block=block_ms, count=500)
        out = []
        for _stream, entries in reply or []:
            for entry_id, values in entries:
                out.append((entry_id.decode(), values[b"event"].decode(), json.loads(values[b"data"])))
        return out

    async def recent(self, owner: str) -> list[str]:
        """This key's most recent job ids, newest first (at most RECENT_JOBS)."""
        return [i.decode() for i in await self.redis.zrevrange(self.recent_key(owner), 0, RECENT_JOBS - 1)]

    async def has_events(self, job_id: str) -> bool:
        """False once a job's event log expired."""
        return bool(await self.redis.exists(self.events_key(job_id)))

    async def service_rate(self) -> ServiceRate | None:
        """The rate of the last jobs finished (:mod:`jobs.eta`), or None before any."""
        entries = await self.redis.zrevrange(self.DONE, 0, RECENT - 1)
        pairs = [entry.decode().split(":", 1) for entry in entries]
        return ServiceRate.of([(float(finished), float(run)) for finished, run in pairs])

    async def stats(self) -> dict[str, int]:
        raw = await self.redis.hgetall(self.STATS)
        return {k.decode(): int(v) for k, v in raw.items()}

    async def histogram(self, name: str) -> dict[str, float]:
        raw = await self.redis.hgetall(f"sdxl:hist:{name}")
        return {k.decode(): float(v) for k, v in raw.items()}


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value)


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else str(value)
