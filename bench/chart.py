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
