"""The open-loop benchmark's pure parts: the request mix, the arrival schedule, the figures and the tables."""

import itertools
import statistics
import time

import pytest

from bench.openloop_load import Outcome, arrival_schedule, open_loop, request_body, request_mix
from bench.openloop_summary import markdown, ratios, summaries, summarize_run
from bench.report import markdown as report_markdown


def test_the_mix_is_seeded_drawn_from_the_steps_and_prefix_stable():
    mix = request_mix(300, [4, 8, 16], seed=3)
    assert mix == request_mix(300, [4, 8, 16], seed=3)
    assert mix != request_mix(300, [4, 8, 16], seed=4)
    assert set(mix) == {4, 8, 16}
    assert all(abs(mix.count(steps) / 300 - 1 / 3) < 0.1 for steps in (4, 8, 16))
    assert request_mix(10, [4, 8, 16], seed=3) == mix[:10]


def test_request_bodies_are_streamed_with_fixed_seeds_and_their_own_prompt():
    bodies = [request_body(i, steps, 64) for i, steps in enumerate([4, 16])]
    assert [b["seed"] for b in bodies] == [0, 1] and all(b["stream"] for b in bodies)
    assert [b["num_inference_steps"] for b in bodies] == [4, 16]
    assert bodies[0]["prompt"] != bodies[1]["prompt"] and bodies[0]["width"] == bodies[0]["height"] == 64


def test_the_schedule_is_seeded_poisson_at_the_asked_rate():
    offsets = arrival_schedule(20_000, rate_rps=2.5, seed=1)
    assert offsets == arrival_schedule(20_000, rate_rps=2.5, seed=1), "the same schedule for both modes"
    assert offsets[0] == 0 and offsets == sorted(offsets)
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert statistics.fmean(gaps) == pytest.approx(1 / 2.5, rel=0.03)
    assert statistics.stdev(gaps) == pytest.approx(1 / 2.5, rel=0.05), "exponential: sd equals the mean"
    assert arrival_schedule(50, 1.0, seed=2) != arrival_schedule(50, 1.0, seed=1)


def test_a_short_schedule_keeps_exactly_the_asked_mean_rate():
    offsets = arrival_schedule(32, rate_rps=2.0, seed=0)
    assert offsets[-1] == pytest.approx(31 / 2.0), "31 gaps of mean 0.5 s, exactly"
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert statistics.stdev(gaps) > 0.2, "still random gaps, not a fixed period"


def test_a_schedule_at_another_rate_is_the_same_one_rescaled():
    slow, fast = arrival_schedule(40, 1.0, seed=5), arrival_schedule(40, 4.0, seed=5)
    assert fast == pytest.approx([offset / 4 for offset in slow])
    with pytest.raises(ValueError):
        arrival_schedule(3, 0.0)


def test_open_loop_sends_at_the_scheduled_offsets_without_waiting_for_answers():
    def send(index, origin):
        sent = time.perf_counter() - origin
        time.sleep(0.2)  # every answer takes longer than the gaps: a closed loop would fall behind
        return Outcome(index, 4, sent_s=sent, status=200)

    offsets = [0.0, 0.02, 0.04, 0.06]
    outcomes = open_loop(send, offsets)
    assert [o.index for o in outcomes] == [0, 1, 2, 3]
    assert [o.sent_s for o in outcomes] == pytest.approx(offsets, abs=0.015)


def record(index, steps, sent, latency, first, status=200, batch=None):
    return {
        "index": index,
        "steps": steps,
        "sent_s": sent,
        "done_s": sent + latency if status == 200 else None,
        "status": status,
        "latency_s": latency if status == 200 else None,
        "first_progress_s": first if status == 200 else None,
        "images": 1 if status == 200 else 0,
        "batch": batch,
    }


def test_one_runs_figures():
    records = [
        record(0, 4, 0.0, 1.0, 0.2, batch={"scheduling": "static", "requests": 2}),
        record(1, 8, 1.0, 2.0, 0.4, batch={"scheduling": "static", "requests": 4}),
        record(2, 4, 2.0, 3.0, 0.6, batch={"scheduling": "static", "requests": 3}),
        record(3, 16, 4.0, 0, 0, status=503),
    ]
    run = summarize_run(records, gpu_util_mean=None)
    assert (run["requests"], run["ok"], run["errors"], run["images"]) == (4, 3, 1, 3)
    assert run["achieved_rate_rps"] == pytest.approx(3 / 4.0)  # 4 sends over 4 s: 3 gaps
    assert run["images_per_s"] == pytest.approx(3 / 5.0)  # first send 0 -> last answer 5
    assert run["mean_latency_s"] == 2.0 and run["p50_latency_s"] == 2.0
    assert run["p95_latency_s"] == pytest.approx(2.9)
    assert run["mean_first_progress_s"] == pytest.approx(0.4) and run["p95_first_progress_s"] == pytest.approx(0.58)
    assert run["p95_latency_by_steps_s"] == {"4": pytest.approx(2.9), "8": 2.0, "16": None}
    assert run["mean_batch_requests"] == 3.0 and run["mean_in_flight_at_join"] is None
    assert run["gpu_util_mean"] is None


def test_continuous_batch_accounting():
    batch = {"scheduling": "continuous", "in_flight_at_join": 2, "shared_steps": 2, "joined_call": 1}
    run = summarize_run([record(0, 4, 0.0, 1.0, 0.1, batch=batch), record(1, 8, 0.5, 1.0, 0.1, batch=batch)])
    assert run["mean_in_flight_at_join"] == 2.0 and run["mean_batch_requests"] is None
    assert run["shared_step_fraction"] == pytest.approx((2 / 4 + 2 / 8) / 2)


def fake_run(mode, load, round_index, p95, mean, images_per_s):
    figures = {
        "achieved_rate_rps": 1.0,
        "mean_latency_s": mean,
        "p50_latency_s": mean,
        "p95_latency_s": p95,
        "mean_first_progress_s": 0.1,
        "p95_first_progress_s": 0.2,
        "images_per_s": images_per_s,
        "errors": 0,
        "gpu_util_mean": None,
        "p95_latency_by_steps_s": {"4": p95 / 2, "16": p95},
        "mean_batch_requests": 3.0 if mode == "static" else None,
        "mean_in_flight_at_join": 2.0 if mode == "continuous-inline" else None,
        "shared_step_fraction": 0.9 if mode == "continuous-inline" else None,
    }
    return {"mode": mode, "load": load, "round": round_index, **figures}


RUNS = [
    fake_run("static", 0.5, 0, p95=4.0, mean=2.0, images_per_s=1.0),
    fake_run("continuous-inline", 0.5, 0, p95=2.0, mean=1.0, images_per_s=1.0),
    fake_run("continuous-inline", 0.5, 1, p95=3.0, mean=1.5, images_per_s=1.2),
    fake_run("static", 0.5, 1, p95=5.0, mean=3.0, images_per_s=1.0),
    fake_run("static", 0.5, 2, p95=9.0, mean=3.0, images_per_s=0.8),
    fake_run("continuous-inline", 0.5, 2, p95=3.0, mean=3.0, images_per_s=1.0),
]


def test_summaries_are_medians_over_rounds_with_every_rounds_value():
    found = {s["mode"]: s for s in summaries(RUNS)}
    static, continuous = found["static"], found["continuous-inline"]
    assert static["rounds_run"] == 3
    assert static["p95_latency_s"] == 5.0 and static["rounds"]["p95_latency_s"] == [4.0, 5.0, 9.0]
    assert continuous["images_per_s"] == 1.0 and continuous["rounds"]["images_per_s"] == [1.0, 1.2, 1.0]
    assert static["p95_latency_by_steps_s"] == {"4": 2.5, "16": 5.0}
    assert static["gpu_util_mean"] is None and continuous["mean_in_flight_at_join"] == 2.0


def test_ratios_are_continuous_over_static_per_round_then_the_median():
    (entry,) = ratios(RUNS)
    assert entry["load"] == 0.5 and entry["pair"] == "continuous-inline/static"
    assert entry["p95_latency"] == {"median": pytest.approx(0.5), "rounds": [0.5, 0.6, 0.333]}
    assert entry["mean_latency"]["rounds"] == [0.5, 0.5, 1.0] and entry["mean_latency"]["median"] == 0.5
    assert entry["images_per_s"]["rounds"] == [1.0, 1.2, 1.25] and entry["images_per_s"]["median"] == 1.2


def test_a_ratio_over_a_missing_figure_is_none():
    runs = [fake_run("static", 0.8, 0, 1.0, 1.0, 1.0), fake_run("continuous-inline", 0.8, 0, 1.0, 1.0, 1.0)]
    runs[0]["p95_latency_s"] = None
    (entry,) = ratios(runs)
    assert entry["p95_latency"] == {"median": None, "rounds": [None]}


def test_markdown_has_every_load_mode_and_ratio_and_bench_report_dispatches_to_it():
    results = {
        "suite": "continuous",
        "capacity": {"rps": 2.0, "static_rps": 2.5, "continuous_rps": 2.0, "requests": 24, "clients": 16},
        "summaries": summaries(RUNS),
        "ratios": ratios(RUNS),
    }
    text = markdown(results)
    assert "static 2.5 req/s, continuous-inline 2.0 req/s" in text
    assert "| 0.5 | static | 1.0 | 3.0 | 3.0 | 5.0 (4.0, 5.0, 9.0) | 0.1 (0.1, 0.1, 0.1) | 0.2 |" in text
    assert "| 0.5 | continuous-inline |" in text
    assert "p95 s, 4 steps | p95 s, 16 steps |" in text
    assert (
        "| 0.5 | continuous-inline/static | 0.5 (0.5, 0.6, 0.333) | 0.5 (0.5, 0.5, 1.0) | 1.2 (1.0, 1.2, 1.25) |"
        in text
    )
    assert all(line.startswith("|") for line in text.splitlines()[2:] if line)
    assert report_markdown(results) == text


def test_bench_run_hands_the_continuous_suite_its_own_arguments(monkeypatch):
    import bench.openloop
    import bench.run

    seen = []
    monkeypatch.setattr(bench.openloop, "main", seen.append)
    monkeypatch.setattr(bench.run, "run", lambda args: seen.append(args.suite))
    bench.run.main(["--suite", "continuous", "--requests", "6", "--loads", "0.5"])
    bench.run.main(["--requests", "6"])
    assert seen == [["--requests", "6", "--loads", "0.5"], "serving"]
