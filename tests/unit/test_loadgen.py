"""The benchmark's accounting: every request counted once, percentiles as numpy computes them."""

import threading
import time

import numpy as np
import pytest

from bench.loadgen import Sample, closed_loop, percentile, summarize
from bench.run import ratios


@pytest.mark.parametrize("q", [0, 1, 50, 95, 99, 100])
def test_percentile_matches_numpy_linear_interpolation(q):
    values = list(np.random.default_rng(1).exponential(size=37))
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_of_one_value_and_of_none():
    assert percentile([2.5], 99) == 2.5
    with pytest.raises(ValueError):
        percentile([], 50)


def test_closed_loop_sends_each_request_once_with_at_most_c_in_flight():
    in_flight, peak, seen = 0, 0, []
    lock = threading.Lock()

    def send(index):
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
            seen.append(index)
        time.sleep(0.01)
        with lock:
            in_flight -= 1
        return Sample(index / 10, 200 if index % 5 else 503, images=2, executed_batch=3, handler_s=0.5)

    samples, wall = closed_loop(send, clients=4, total=20)
    assert sorted(seen) == list(range(20))
    assert peak == 4
    assert [s.latency_s for s in samples] == [i / 10 for i in range(20)]
    assert wall >= 20 / 4 * 0.01

    summary = summarize(samples, wall_s=2.0)
    assert (summary["requests"], summary["ok"], summary["errors"]) == (20, 16, 4)
    assert summary["images"] == 32 and summary["images_per_s"] == 16.0
    assert summary["mean_executed_batch"] == 3.0 and summary["mean_handler_s"] == 0.5
    ok_latencies = [i / 10 for i in range(20) if i % 5]
    assert summary["p50_s"] == pytest.approx(np.percentile(ok_latencies, 50), abs=1e-4)
    assert summary["p99_s"] == pytest.approx(np.percentile(ok_latencies, 99), abs=1e-4)


def test_ratios_pair_variants_within_each_round_then_take_the_median():
    def runs(*values):
        return [{"images_per_s": v} for v in values]

    rounds = {
        "direct-b4": runs(10.0, 5.0, 8.0),
        "served-b4": runs(9.0, 5.0, 8.8),
        "baseline-b4": runs(4.5, 2.0, 4.0),
        "streamed-b4": runs(9.0, 4.0, 8.8),
        "mixed-served-b4": runs(6.0, 6.0, 6.0),
        "mixed-baseline-b4": runs(4.0, 5.0, 3.0),
        "direct-b8": runs(1.0, 1.0, 1.0),
    }
    assert ratios(rounds) == {
        "served_over_direct_b4": {"median": 1.0, "rounds": [0.9, 1.0, 1.1]},
        "served_over_baseline_b4": {"median": 2.2, "rounds": [2.0, 2.5, 2.2]},
        "streamed_over_served_b4": {"median": 1.0, "rounds": [1.0, 0.8, 1.0]},
        "mixed_served_over_baseline_b4": {"median": 1.5, "rounds": [1.5, 1.2, 2.0]},
    }
