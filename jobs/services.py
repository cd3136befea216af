"""What the gateway and the dispatcher share: one Redis connection, the job state, the two SAQ queues
(generation jobs, webhook deliveries) and the result store, built from the settings in one place."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from saq import Job
from saq.queue.redis import RedisQueue

from . import webhooks
from .queue import JobQueue
from .results import ResultStore, open_store
from .settings import JobSettings
from .state import JobState
from .views import job_view

log = logging.getLogger("sdxl.jobs")


@dataclass
class Services:
    settings: JobSettings
    redis: Redis
    state: JobState
    queue: JobQueue
    webhook_queue: RedisQueue
    store: ResultStore

    @classmethod
    def connect(cls, settings: JobSettings) -> Services:
        # Ride out a Redis restart: every command retries with backoff for about a minute.
        retry = Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=40)
        redis = Redis.from_url(
            settings.redis_url,
            retry=retry,
            retry_on_error=[RedisConnectionError, RedisTimeoutError, ConnectionResetError, OSError],
            health_check_interval=15,
        )
        state = JobState(redis, settings.result_ttl_s, settings.expired_record_ttl_s)
        services = cls(
            settings=settings,
            redis=redis,
            state=state,
            queue=JobQueue(redis, settings.queue_name, state),
            webhook_queue=RedisQueue(redis, name=f"{settings.queue_name}-webhooks"),
            store=open_store(settings),
        )
        state.on_finished = services.job_finished
        return services

    def generation_job(self, job_id: str) -> Job:
        """The SAQ job that carries ``job_id`` to a dispatcher (the body stays in Redis, not in the job)."""
        s = self.settings
        return Job(
            function="generate",
            key=job_id,
            timeout=s.job_timeout_s,
            heartbeat=s.heartbeat_s,
            retries=s.attempts,
            ttl=s.result_ttl_s,
        )

    async def job_finished(self, job_id: str, status: str) -> None:
        """A job reached its one terminal status: queue its webhook, if it asked for one. Never raises: the
        job's end is already written, and whoever wrote it must not be retried for a webhook."""
        try:
            await self._queue_webhook(job_id, status)
        except Exception:
            log.exception("could not queue the webhook of job %s (%s)", job_id, status)

    async def _queue_webhook(self, job_id: str, status: str) -> None:
        record = await self.state.record(job_id)
        if not record or not record.get("webhook") or status not in webhooks.WEBHOOK_EVENTS:
            return
        base = (self.settings.public_url or "").rstrip("/")
        view = job_view(record, base_url=base, result_ttl_s=self.settings.result_ttl_s)
        delivery_id = f"whd_{job_id}_{status}"
        s = self.settings
        await self.webhook_queue.enqueue(
            Job(
                function=webhooks.DELIVER,
                key=delivery_id,
                kwargs={
                    "url": record["webhook"],
                    "delivery_id": delivery_id,
                    "status": status,
                    "body": webhooks.payload(delivery_id, status, view).decode(),
                },
                retries=s.webhook_attempts,
                retry_delay=s.webhook_retry_delay_s,
                retry_backoff=s.webhook_retry_delay_s * 2 ** max(s.webhook_attempts - 1, 0),
                timeout=int(s.webhook_timeout_s) + 5,
                ttl=s.result_ttl_s,
            )
        )

    async def close(self) -> None:
        await self.redis.aclose()
