"""/metrics of the gateway: the job API's Prometheus series, read from Redis, so they are cluster-wide.

Every gateway replica reports the same values: aggregate with ``max`` (not ``sum``) across replicas.
"""

from __future__ import annotations

from .services import Services
from .state import BUCKETS

# name -> (type, help). The one list of the job API's series (docs/jobs.md and the tests use it).
SERIES = {
    "sdxl_jobs_submitted_total": ("counter", "Jobs accepted by POST /generate"),
    "sdxl_jobs_finished_total": ("counter", "Jobs finished, by status: completed, failed, canceled"),
    "sdxl_jobs_queue_depth": ("gauge", "Jobs waiting for a dispatcher"),
    "sdxl_jobs_running": ("gauge", "Jobs held by a dispatcher"),
    "sdxl_jobs_queue_wait_seconds": ("histogram", "Seconds from submit to a dispatcher's start, per attempt"),
    "sdxl_jobs_run_seconds": ("histogram", "Seconds from a dispatcher's start to the job's end"),
    "sdxl_jobs_webhook_deliveries_total": ("counter", "Webhook attempts, by result: delivered, failed"),
}


async def render(services: Services) -> str:
    stats = await services.state.stats()
    queued, running = await services.queue.depth()
    lines: list[str] = []

    def head(name: str) -> None:
        kind, text = SERIES[name]
        lines.extend([f"# HELP {name} {text}", f"# TYPE {name} {kind}"])

    head("sdxl_jobs_submitted_total")
    lines.append(f"sdxl_jobs_submitted_total {stats.get('submitted', 0)}")
    head("sdxl_jobs_finished_total")
    for status in ("completed", "failed", "canceled"):
        lines.append(f'sdxl_jobs_finished_total{{status="{status}"}} {stats.get(status, 0)}')
    head("sdxl_jobs_queue_depth")
    lines.append(f"sdxl_jobs_queue_depth {queued}")
    head("sdxl_jobs_running")
    lines.append(f"sdxl_jobs_running {running}")
    for name, key in (("sdxl_jobs_queue_wait_seconds", "wait"), ("sdxl_jobs_run_seconds", "run")):
        head(name)
        histogram = await services.state.histogram(key)
        cumulative = 0
        for bound in BUCKETS:
            cumulative += int(histogram.get(str(bound), 0))
            lines.append(f'{name}_bucket{{le="{bound}"}} {cumulative}')
        cumulative += int(histogram.get("+Inf", 0))
        lines.append(f'{name}_bucket{{le="+Inf"}} {cumulative}')
        lines.append(f"{name}_sum {histogram.get('sum', 0.0)}")
        lines.append(f"{name}_count {int(histogram.get('count', 0))}")
    head("sdxl_jobs_webhook_deliveries_total")
    lines.append(f'sdxl_jobs_webhook_deliveries_total{{result="delivered"}} {stats.get("webhook_delivered", 0)}')
    lines.append(f'sdxl_jobs_webhook_deliveries_total{{result="failed"}} {stats.get("webhook_failed_attempts", 0)}')
    return "\n".join(lines) + "\n"
