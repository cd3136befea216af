"""Print a benchmark results.json as Markdown tables (what the README shows).

python -m bench.report bench/results/2026-11-30-cpu/results.json
python -m bench.report bench/results/<date>-cpu-continuous/results.json    # the open-loop suite's tables
"""

from __future__ import annotations

import json
import sys


def markdown(results: dict) -> str:
    if results.get("suite") == "continuous":  # bench/openloop.py's results
        from bench.openloop_summary import markdown as openloop_markdown

        return openloop_markdown(results)
    rows = [
        "| variant | batch | images/s (rounds) | p50 s | p95 s | p99 s | mean batch | handler s/call | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v in results["variants"]:
        rounds = ", ".join(str(x) for x in v.get("images_per_s_rounds", [v["images_per_s"]]))
        rows.append(
            f"| {v['name']} | {v['batch_size']} | {v['images_per_s']} ({rounds}) | {v.get('p50_s') or '-'} | "
            f"{v.get('p95_s') or '-'} | {v.get('p99_s') or '-'} | {v['mean_executed_batch']} | "
            f"{v.get('mean_handler_s', '-')} | {v['peak_rss_mb']} |"
        )
    rows += ["", "| ratio | value |", "|---|---|"]
    rows[-2:] = ["| ratio | median over rounds | per round |", "|---|---|---|"]
    rows += [
        f"| {name} | {r['median']} | {', '.join(map(str, r['rounds']))} |" for name, r in results["ratios"].items()
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    with open(sys.argv[1]) as handle:
        print(markdown(json.load(handle)))
