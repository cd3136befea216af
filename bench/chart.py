"""Chart of a benchmark run: throughput against batch size per variant, and latency percentiles."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def draw(results: dict, path: Path) -> None:
    variants = results["variants"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for kind, style in (("direct", "o--"), ("served", "o-"), ("baseline", "s-")):
        points = sorted((v["batch_size"], v["images_per_s"]) for v in variants if v["kind"] == kind)
        if points:
            left.plot(*zip(*points, strict=True), style, label=kind)
    for kind, marker in (("mixed-served", "^"), ("mixed-baseline", "v"), ("streamed", "*")):
        for v in variants:
            if v["kind"] == kind:
                left.plot(
                    [v["batch_size"]],
                    [v["images_per_s"]],
                    marker,
                    markersize=10,
                    label=kind + (" (3 shapes)" if "mixed" in kind else ""),
                )
    left.set_xlabel("batch size")
    left.set_ylabel("images / s")
    left.set_xscale("log", base=2)
    left.set_title("Throughput")
    left.legend()
    left.grid(alpha=0.3)

    served = [v for v in variants if v["kind"] != "direct" and v.get("p50_s") is not None]
    x = range(len(served))
    for offset, q in ((-0.25, "p50"), (0.0, "p95"), (0.25, "p99")):
        right.bar([i + offset for i in x], [v[f"{q}_s"] for v in served], width=0.25, label=q)
    right.set_xticks(list(x), [v["name"] for v in served], rotation=45, ha="right")
    right.set_ylabel("latency (s)")
    right.set_title(f"Latency ({results['settings']['clients']} clients)")
    right.legend()
    right.grid(alpha=0.3, axis="y")

    machine = results["machine"]
    figure.suptitle(
        f"sdxl-torchserve, {results['settings']['model']} model {results['settings']['size']}px "
        f"{results['settings']['steps']} steps, {machine.get('gpu') or str(machine['cpu_count']) + ' CPU cores'}, "
        f"{results['date'][:10]}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def draw_openloop(results: dict, path: Path) -> None:
    """The open-loop suite (bench/openloop.py): latency, time to first progress and images/s against load,
    static and continuous batching (medians over rounds)."""
    summaries = results["summaries"]
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 5))
    for mode, color in (
        ("static", "tab:blue"),
        ("continuous-inline", "tab:orange"),
        ("continuous-overlap", "tab:green"),
    ):
        points = sorted((s for s in summaries if s["mode"] == mode), key=lambda s: s["load"])
        loads = [s["load"] for s in points]
        for axis, name, style, label in (
            (left, "p50_latency_s", "o--", "p50"),
            (left, "p95_latency_s", "o-", "p95"),
            (middle, "mean_first_progress_s", "o--", "mean"),
            (middle, "p95_first_progress_s", "o-", "p95"),
            (right, "images_per_s", "o-", "images/s"),
        ):
            values = [float("nan") if s[name] is None else s[name] for s in points]
            axis.plot(loads, values, style, color=color, label=f"{mode} {label}")
    loads = sorted({s["load"] for s in summaries})
    offered = [load * results["capacity"]["rps"] for load in loads]
    right.plot(loads, offered, ":", color="gray", label="offered: load x capacity (req/s)")
    for axis, ylabel, title in (
        (left, "latency (s)", "Latency (send -> result)"),
        (middle, "time to first progress (s)", "Time to first progress event"),
        (right, "images / s, requests / s", "Throughput"),
    ):
        axis.set_xlabel("load (fraction of capacity)")
        axis.set_ylabel(ylabel)
        axis.set_title(title)
        axis.legend()
        axis.grid(alpha=0.3)
        axis.set_ylim(bottom=0)

    settings, machine = results["settings"], results["machine"]
    figure.suptitle(
        f"sdxl-torchserve open loop, {settings['model']} model {settings['size']}px, steps "
        f"{','.join(map(str, settings['steps_mix']))}, batch {settings['batch_size']}, capacity "
        f"{results['capacity']['rps']} req/s, {machine.get('gpu') or str(machine['cpu_count']) + ' CPU cores'}, "
        f"{results['date'][:10]}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
