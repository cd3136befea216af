"""The open-loop benchmark's arithmetic: one run's figures, medians over rounds, ratios between modes, Markdown.

Pure functions over the records bench/openloop.py writes into results.json, so every figure can be recomputed
from that file. A request record: ``index``, ``steps``, ``status``, ``sent_s`` and ``done_s`` (offsets from the
run start), ``latency_s`` (send -> ``result`` event), ``first_progress_s`` (send -> first ``progress`` event),
``images`` and ``batch`` (the handler's accounting; None on failure).
"""

from __future__ import annotations

import statistics

from bench.loadgen import percentile

# The figures of one run that summaries take the median of over rounds, in table order.
FIGURES = (
    "achieved_rate_rps",
    "mean_latency_s",
    "p50_latency_s",
    "p95_latency_s",
    "mean_first_progress_s",
    "p95_first_progress_s",
    "images_per_s",
    "errors",
    "gpu_util_mean",
)
# The handler's batch accounting (see batch_figures), also summarized over rounds.
BATCH_FIGURES = ("mean_batch_requests", "mean_in_flight_at_join", "shared_step_fraction")
# The figures whose per-round values the main table shows too (results.json has every figure's).
ROUNDS_SHOWN = ("p95_latency_s", "mean_first_progress_s", "images_per_s", "errors")
# (ratio name, figure), per load and compared pair of modes.
RATIOS = (("p95_latency", "p95_latency_s"), ("mean_latency", "mean_latency_s"), ("images_per_s", "images_per_s"))
# (numerator, denominator): continuous against static batching; side work overlapped against inline.
PAIRS = (
    ("continuous-inline", "static"),
    ("continuous-overlap", "static"),
    ("continuous-overlap", "continuous-inline"),
)


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _mean(values: list[float]) -> float | None:
    return _round(statistics.fmean(values)) if values else None


def _p(values: list[float], q: float) -> float | None:
    return _round(percentile(values, q)) if values else None


def batch_figures(records: list[dict]) -> dict:
    """The handler's batch accounting of successful requests, averaged: requests per static batch; for
    continuous batching the requests already in flight at join and the fraction of a request's steps whose
    UNet forward it shared with other requests."""
    static = [r for r in records if (r.get("batch") or {}).get("scheduling") == "static"]
    continuous = [r for r in records if (r.get("batch") or {}).get("scheduling") == "continuous"]
    return {
        "mean_batch_requests": _mean([r["batch"]["requests"] for r in static]),
        "mean_in_flight_at_join": _mean([r["batch"]["in_flight_at_join"] for r in continuous]),
        "shared_step_fraction": _mean([r["batch"]["shared_steps"] / r["steps"] for r in continuous]),
    }


def summarize_run(records: list[dict], gpu_util_mean: float | None = None) -> dict:
    """One (mode, load, round) run: latency and time-to-first-progress of the successful requests, images/s over
    first send -> last answer, errors, the arrival rate achieved, and p95 latency per step count."""
    ok = [r for r in records if r["status"] == 200]
    latencies = [r["latency_s"] for r in ok]
    firsts = [r["first_progress_s"] for r in ok if r["first_progress_s"] is not None]
    sends = [r["sent_s"] for r in records]
    span = max((r["done_s"] for r in ok), default=0.0) - min(sends, default=0.0)
    arrivals = max(sends, default=0.0) - min(sends, default=0.0)
    images = sum(r["images"] for r in ok)
    by_steps = {}
    for steps in sorted({r["steps"] for r in records}):
        by_steps[str(steps)] = _p([r["latency_s"] for r in ok if r["steps"] == steps], 95)
    return {
        "requests": len(records),
        "ok": len(ok),
        "errors": len(records) - len(ok),
        "images": images,
        "achieved_rate_rps": _round((len(sends) - 1) / arrivals) if arrivals > 0 else None,
        "mean_latency_s": _mean(latencies),
        "p50_latency_s": _p(latencies, 50),
        "p95_latency_s": _p(latencies, 95),
        "mean_first_progress_s": _mean(firsts),
        "p95_first_progress_s": _p(firsts, 95),
        "images_per_s": _round(images / span) if span > 0 else 0.0,
        "gpu_util_mean": gpu_util_mean,
        "p95_latency_by_steps_s": by_steps,
        **batch_figures(ok),
    }


def median_of(values: list[float | None]) -> float | None:
    """The median of the values that exist (None when none do)."""
    present = [v for v in values if v is not None]
    return _round(statistics.median(present)) if present else None


def summaries(runs: list[dict]) -> list[dict]:
    """Per (mode, load), in the order first run: the median over rounds of every figure (and of p95 latency
    per step count), and each figure's per-round values under ``rounds``."""
    grouped: dict[tuple[str, float], list[dict]] = {}
    for run in sorted(runs, key=lambda r: r["round"]):
        grouped.setdefault((run["mode"], run["load"]), []).append(run)
    found = []
    for (mode, load), group in grouped.items():
        summary = {"mode": mode, "load": load, "rounds_run": len(group)}
        summary.update({f: median_of([r[f] for r in group]) for f in FIGURES + BATCH_FIGURES})
        steps = sorted({s for r in group for s in r["p95_latency_by_steps_s"]}, key=int)
        summary["p95_latency_by_steps_s"] = {
            s: median_of([r["p95_latency_by_steps_s"].get(s) for r in group]) for s in steps
        }
        summary["rounds"] = {f: [r[f] for r in group] for f in FIGURES + BATCH_FIGURES}
        found.append(summary)
    return found


def ratios(runs: list[dict]) -> list[dict]:
    """Per load and pair of modes that both ran (:data:`PAIRS`): numerator over denominator for p95 latency,
    mean latency and images/s, per round (the modes ran back to back) and the median over rounds. A ratio
    with a missing or zero figure is None."""
    by_key = {(r["mode"], r["load"], r["round"]): r for r in runs}
    modes = {r["mode"] for r in runs}
    found = []
    for numerator, denominator in (pair for pair in PAIRS if set(pair) <= modes):
        for load in sorted({r["load"] for r in runs}):
            rounds = sorted({r["round"] for r in runs if r["load"] == load})
            entry: dict = {"load": load, "pair": f"{numerator}/{denominator}"}
            for name, figure in RATIOS:
                per_round = []
                for index in rounds:
                    over, under = by_key.get((numerator, load, index)), by_key.get((denominator, load, index))
                    if over and under and under[figure] and over[figure] is not None:
                        per_round.append(round(over[figure] / under[figure], 3))
                    else:
                        per_round.append(None)
                entry[name] = {"median": median_of(per_round), "rounds": per_round}
            found.append(entry)
    return found


def _cell(summary: dict, figure: str) -> str:
    value = summary[figure]
    rounds = summary["rounds"][figure]
    text = "-" if value is None else str(value)
    if figure not in ROUNDS_SHOWN or len(rounds) < 2:
        return text
    return f"{text} ({', '.join('-' if v is None else str(v) for v in rounds)})"


def markdown(results: dict) -> str:
    """The capacity, the per (load, mode) figures (median over rounds; the key ones' per-round values in
    brackets), p95 latency per step count with the batch accounting, and the ratios between modes."""
    capacity = results["capacity"]
    rows = [
        f"Capacity (closed loop, {capacity['clients']} clients, {capacity['requests']} requests): static "
        f"{capacity['static_rps']} req/s, continuous-inline {capacity['continuous_rps']} req/s; loads are fractions of "
        f"{capacity['rps']} req/s.",
        "",
        "| load | mode | arrivals req/s | mean s | p50 s | p95 s | first progress mean s | first progress p95 s "
        "| images/s | errors | GPU util % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in results["summaries"]:
        cells = [_cell(s, f) for f in FIGURES]
        rows.append(f"| {s['load']} | {s['mode']} | " + " | ".join(cells) + " |")
    steps = sorted({k for s in results["summaries"] for k in s["p95_latency_by_steps_s"]}, key=int)
    rows += [
        "",
        "| load | mode | "
        + " | ".join(f"p95 s, {k} steps" for k in steps)
        + " | static batch | in flight at join | shared step fraction |",
        "|---|---|" + "---|" * (len(steps) + len(BATCH_FIGURES)),
    ]
    for s in results["summaries"]:
        values = [s["p95_latency_by_steps_s"].get(k) for k in steps] + [s[f] for f in BATCH_FIGURES]
        rows.append(f"| {s['load']} | {s['mode']} | " + " | ".join("-" if v is None else str(v) for v in values) + " |")
    rows += [
        "",
        "| load | ratio | " + " | ".join(name.replace("_", " ") for name, _ in RATIOS) + " |",
        "|---|---|" + "---|" * len(RATIOS),
    ]
    for r in results["ratios"]:
        cells = []
        for name, _ in RATIOS:
            rounds = ", ".join("-" if v is None else str(v) for v in r[name]["rounds"])
            cells.append(f"{'-' if r[name]['median'] is None else r[name]['median']} ({rounds})")
        rows.append(f"| {r['load']} | {r['pair']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
