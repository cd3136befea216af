"""The dispatcher: a sidecar of each TorchServe pod that takes jobs from the queue and runs them on its
TorchServe with ``"stream": true``, relaying progress into the job's event log.

``concurrency`` jobs run at once (batchSize x workers by default) so TorchServe's batches still fill; every GPU
decision (batching, continuous joining) stays TorchServe's. On SIGTERM (a spot reclaim notice) it takes no more
jobs, lets running ones finish for ``drain_grace_s``, then puts the rest back at the head of the queue. A job whose
dispatcher dies (SIGKILL, node loss) stops heartbeating, is swept by a live dispatcher and runs again, attempt + 1.

Run: ``python -m jobs.dispatcher --config config/jobs.yaml``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from saq import Worker

from . import webhooks
from .services import Services
from .settings import JobSettings

log = logging.getLogger("sdxl.dispatcher")
RETRYABLE_STATUS = (500, 502, 503)  # worker died / TorchServe restarting / TorchServe's own queue full
CONTENT_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


class Retryable(Exception):
    """TorchServe could not run the job now; SAQ puts it back at the head of the queue for another try."""


class QuietWorker(Worker):
    """A SAQ worker that leaves signals to :func:`serve` (two workers share one process) and drains its queue
    before it stops."""

    SIGNALS: list = []  # noqa: RUF012

    async def stop(self) -> None:
        self.queue.draining = True
        self.event.set()
        # The upkeep loops sleep up to their timer and hold no job: end them now, so that SAQ's grace period
        # (it waits for every task) is spent on running jobs only. Idle slots return within dequeue_timeout.
        for task in list(self.tasks):
            if task.get_name() != "process":
                task.cancel()
        await super().stop()


def default_concurrency(settings: JobSettings) -> int:
    """batchSize x maxWorkers of the served model's yaml: enough jobs in flight to fill every batch."""
    model = yaml.safe_load(Path(settings.model_yaml).read_text()) or {}
    return int(model.get("batchSize", 1)) * int(model.get("maxWorkers", model.get("minWorkers", 1)))


class Dispatcher:
    def __init__(self, services: Services):
        self.services = services
        self.settings = services.settings
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=self.settings.job_timeout_s))

    def torchserve_headers(self) -> dict[str, str]:
        """TorchServe's inference token, read each time: a restarted TorchServe writes a new one."""
        headers = {"Content-Type": "application/json"}
        path = Path(self.settings.torchserve_key_file)
        if path.exists():
            key = json.loads(path.read_text()).get("inference", {}).get("key")
            if key:
                headers["Authorization"] = f"Bearer {key}"
        return headers

    async def generate(self, ctx: dict[str, Any]) -> None:
        """SAQ's job function: one job, start to finish.

        1. Skip a job that ended while it waited (canceled).
        2. Mark it processing (attempt n), start its heartbeat.
        3. Stream it through TorchServe, relaying progress and previews.
        4. Store the images, mark it completed; or failed with TorchServe's error; or raise Retryable.
        """
        job = ctx["job"]
        job_id, state = job.key, self.services.state
        # 1.
        record = await state.record(job_id)
        body = await state.body(job_id)
        if record is None or body is None or record["status"] != "pending":
            return
        # 2.
        started = time.time()
        await state.transition(job_id, "processing", attempt=job.attempts, started_at=started)
        await state.observe("wait", started - float(record["created_at"]))
        heartbeat = asyncio.create_task(self._heartbeat(job))
        try:
            # 3. + 4.
            outcome = await self._run(job_id, json.loads(body))
        except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
            outcome = Retryable(f"TorchServe unreachable: {exc!r}")
        finally:
            heartbeat.cancel()
        if isinstance(outcome, Retryable):
            await asyncio.sleep(min(2.0**job.attempts, 10.0))  # backoff before the next try
            raise outcome
        await state.observe("run", time.time() - started)

    async def _run(self, job_id: str, request: dict[str, Any]) -> Retryable | None:
        state, settings = self.services.state, self.settings
        url = f"{settings.torchserve_url}/predictions/{settings.model_name}"
        payload = json.dumps({**request, "stream": True})
        async with self.client.stream("POST", url, content=payload, headers=self.torchserve_headers()) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                if response.status_code in RETRYABLE_STATUS:
                    return Retryable(f"TorchServe answered {response.status_code}: {text[:300]}")
                await state.transition(job_id, "failed", error=_error_of(response.status_code, text))
                return None
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                kind = event.get("event")
                if kind in ("progress", "preview"):
                    await state.progress(job_id, event)
                elif kind == "result":
                    await self._completed(job_id, event)
                    return None
                elif kind == "error":
                    error = {k: event.get(k) for k in ("code", "type", "message", "field")}
                    await state.transition(job_id, "failed", error=error)
                    return None
        return Retryable("TorchServe ended the stream without a result")

    async def _completed(self, job_id: str, result: dict[str, Any]) -> None:
        content_type = result.get("content_type", "image/png")
        keys = []
        for index, image in enumerate(result.get("images", [])):
            key = f"{job_id}/{index}.{CONTENT_EXTENSIONS.get(content_type, 'bin')}"
            await self.services.store.put(key, base64.b64decode(image), content_type)
            keys.append(key)
        fields = {
            "images": keys,
            "content_type": content_type,
            "seeds": result.get("seeds"),
            "parameters": result.get("parameters"),
            "batch": result.get("batch"),
        }
        if not await self.services.state.transition(job_id, "completed", **fields):
            for key in keys:  # canceled meanwhile: its result is discarded
                await self.services.store.delete(key)

    async def _heartbeat(self, job: Any) -> None:
        while True:
            await asyncio.sleep(max(self.settings.heartbeat_s / 3, 0.5))
            with contextlib.suppress(Exception):
                await job.update()

    async def deliver_webhook(self, ctx: dict[str, Any], *, url: str, delivery_id: str, status: str, body: str) -> int:
        try:
            code = await webhooks.deliver(self.settings, url, delivery_id, body.encode())
        except Exception:
            await self.services.redis.hincrby(self.services.state.STATS, "webhook_failed_attempts", 1)
            raise
        await self.services.redis.hincrby(self.services.state.STATS, "webhook_delivered", 1)
        return code

    async def sweep_results(self, ctx: dict[str, Any]) -> None:
        await self.services.store.sweep(self.settings.result_ttl_s)


def _error_of(status: int, text: str) -> dict[str, Any]:
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        error = json.loads(text)["error"]
        return {k: error.get(k) for k in ("code", "type", "message", "field")}
    return {"code": status, "type": "TorchServeError", "message": text[:500]}


async def serve(settings: JobSettings, concurrency: int | None = None) -> None:
    """Run a dispatcher until SIGTERM/SIGINT, then drain."""
    services = Services.connect(settings)
    dispatcher = Dispatcher(services)
    slots = concurrency or settings.concurrency or default_concurrency(settings)
    jobs_worker = QuietWorker(
        services.queue,
        functions=[("generate", dispatcher.generate)],
        concurrency=slots,
        timers={"sweep": settings.sweep_s, "abort": 1, "schedule": 1},
        dequeue_timeout=1.0,
        shutdown_grace_period_s=settings.drain_grace_s,
        cancellation_hard_deadline_s=5.0,
    )
    webhook_worker = QuietWorker(
        services.webhook_queue,
        functions=[(webhooks.DELIVER, dispatcher.deliver_webhook)],
        concurrency=4,
        timers={"sweep": settings.sweep_s, "schedule": 1},
        dequeue_timeout=1.0,
        shutdown_grace_period_s=5,
    )
    services.webhook_queue.draining = False
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("dispatcher: %d slots on %s, queue %s", slots, settings.torchserve_url, settings.queue_name)
    runs = [asyncio.create_task(jobs_worker.start()), asyncio.create_task(webhook_worker.start())]
    sweeper = asyncio.create_task(_every(600, lambda: dispatcher.sweep_results({})))
    await stop.wait()
    log.info("dispatcher: draining (grace %d s)", settings.drain_grace_s)
    sweeper.cancel()
    await asyncio.gather(jobs_worker.stop(), webhook_worker.stop())
    for run in runs:
        run.cancel()
    await dispatcher.client.aclose()
    await services.close()
    log.info("dispatcher: stopped")


async def _every(seconds: float, action) -> None:
    while True:
        with contextlib.suppress(Exception):
            await action()
        await asyncio.sleep(seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="jobs yaml (default: $SDXL_JOBS_CONFIG, then built-in defaults)")
    parser.add_argument("--concurrency", type=int, help="jobs at once (default: batchSize x maxWorkers)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(JobSettings.load(args.config), args.concurrency))


if __name__ == "__main__":
    main()
