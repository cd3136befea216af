"""The dispatcher: a sidecar of each TorchServe pod that takes jobs from the queue and runs them on its
TorchServe with ``"stream": true``, relaying progress into the job's event log.

``concurrency`` jobs run at once (batchSize x workers by default) so TorchServe's batches still fill; every GPU
decision (batching, continuous joining) stays TorchServe's. A canceled running job keeps its slot until TorchServe
stops computing it: at once in continuous batching (closing the stream frees the request within a step), at the
end of its batch in static batching (the stream is read to its end and discarded), so canceled work never lets a
dispatcher hand TorchServe more than ``concurrency`` jobs. TorchServe's inference key is renewed through its
management API when it expires or is rejected (sdxl_client.torchserve_keys), and every TorchServe error body
becomes a clean job error (type and message, never a traceback or a server path).

On SIGTERM (a spot reclaim notice) it takes no more jobs, lets running ones finish for ``drain_grace_s``, then
puts the rest back at the head of the queue. A job whose dispatcher dies (SIGKILL, node loss) stops heartbeating,
is swept by a live dispatcher and runs again, attempt + 1.

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

from handler.wire.events import ERROR, RELAYED, RESULT
from sdxl_client.torchserve_keys import KeyRenewalFailed, TorchServeKeys, key_rejected

from . import webhooks
from .services import Services
from .settings import JobSettings
from .torchserve_answers import Retryable, retryable, torchserve_error

log = logging.getLogger("sdxl.dispatcher")
CONTENT_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


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


def served_model(settings: JobSettings) -> dict[str, Any]:
    return yaml.safe_load(Path(settings.model_yaml).read_text()) or {}


def default_concurrency(settings: JobSettings) -> int:
    """batchSize x maxWorkers of the served model's yaml: enough jobs in flight to fill every batch."""
    model = served_model(settings)
    return int(model.get("batchSize", 1)) * int(model.get("maxWorkers", model.get("minWorkers", 1)))


class Dispatcher:
    def __init__(self, services: Services):
        self.services = services
        self.settings = services.settings
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=self.settings.job_timeout_s))
        self.keys = TorchServeKeys(self.settings.torchserve_key_file, self.settings.torchserve_management_url)
        # Static batching computes a canceled request to the end of its batch whatever the client does.
        self.continuous = bool(served_model(self.settings).get("continuousBatching", False))

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
            outcome = Retryable(
                {
                    "code": 503,
                    "type": "TorchServeUnreachable",
                    "message": f"TorchServe unreachable: {type(exc).__name__}",
                }
            )
        except Exception as exc:  # our own bug: the job fails cleanly, the details go to our log only
            log.exception("job %s: dispatcher error", job_id)
            outcome = None
            message = f"the dispatcher failed on this job ({type(exc).__name__}); its log has the details"
            await state.transition(job_id, "failed", error={"code": 500, "type": "DispatcherError", "message": message})
        finally:
            heartbeat.cancel()
        if isinstance(outcome, Retryable):
            if not job.retryable:  # the last attempt: fail with TorchServe's own error, not SAQ's traceback
                await state.transition(job_id, "failed", error=outcome.error)
                return
            await asyncio.sleep(min(2.0**job.attempts, 10.0))  # backoff before the next try
            raise outcome
        await state.observe("run", time.time() - started)

    async def _run(self, job_id: str, request: dict[str, Any]) -> Retryable | None:
        """Stream one job through TorchServe (a rejected key is renewed and the request sent once more)."""
        state, settings = self.services.state, self.settings
        url = f"{settings.torchserve_url}/predictions/{settings.model_name}"
        payload = json.dumps({**request, "stream": True}, ensure_ascii=False).encode()
        for try_number in (1, 2):
            key = await asyncio.to_thread(self.keys.key)
            headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
            async with self.client.stream("POST", url, content=payload, headers=headers) as response:
                if response.status_code != 200:
                    text = (await response.aread()).decode(errors="replace")
                    if try_number == 1 and key and key_rejected(response.status_code, text):
                        try:
                            await asyncio.to_thread(self.keys.renew, "inference", key)
                            continue
                        except KeyRenewalFailed as exc:
                            log.warning("job %s: %s", job_id, exc)
                    error = torchserve_error(response.status_code, text)
                    if retryable(response.status_code, error):
                        return Retryable(error)
                    await state.transition(job_id, "failed", error=error)
                    return None
                discard = asyncio.Event()
                relay = asyncio.create_task(self._relay(job_id, response, discard))
                try:
                    return await asyncio.shield(relay)
                except asyncio.CancelledError:  # canceled (SAQ's abort) or shutting down
                    if self.continuous:  # close the stream: TorchServe drops the request within a step
                        relay.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await relay  # stopped reading before the stream is closed under it
                    else:
                        discard.set()  # static batching computes it to the end of its batch anyway: hold
                        with contextlib.suppress(Exception):  # the slot until then, so no other job is
                            await relay  # sent to TorchServe while it does
                    raise
        raise AssertionError("unreachable")

    async def _relay(self, job_id: str, response: httpx.Response, discard: asyncio.Event) -> Retryable | None:
        """Relay the NDJSON events into the job's log until the result or an error; once ``discard`` is set
        (the job was canceled) read on to the end of the stream and write nothing."""
        state = self.services.state
        async for line in response.aiter_lines():
            if not line.strip() or discard.is_set():
                continue
            event = json.loads(line)
            kind = event.get("event")
            if kind in RELAYED:
                await state.progress(job_id, event)
            elif kind == RESULT:
                await self._completed(job_id, event)
                return None
            elif kind == ERROR:
                await state.transition(job_id, "failed", error=torchserve_error(event.get("code", 500), line))
                return None
        if discard.is_set():
            return None
        return Retryable(
            {"code": 502, "type": "TorchServeError", "message": "TorchServe ended the stream without a result"}
        )

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
