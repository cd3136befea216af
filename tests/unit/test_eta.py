"""jobs/eta.py: the service rate is measured over busy time (no decay while idle) and the estimate starts a job
at once while a slot is free."""

import pytest

from jobs.eta import ServiceRate


def test_no_rate_before_any_job_finished():
    assert ServiceRate.of([]) is None


def test_idle_time_between_bursts_does_not_lower_the_rate():
    burst = [(10.0, 2.0)] * 4  # four jobs run together for 2 s
    later = [(1000.0, 2.0)] * 4  # the same, after ~16 idle minutes
    rate = ServiceRate.of(burst + later)
    assert rate.jobs_per_s == pytest.approx(2.0) and rate.mean_run_s == 2.0 and rate.slots == 4


def test_a_job_with_a_free_slot_is_quoted_its_run_time_and_later_ones_wait_for_completions():
    rate = ServiceRate(jobs_per_s=2.0, mean_run_s=2.0, slots=4)
    assert rate.estimate(position=0, running=0) == 2.0
    assert rate.estimate(position=3, running=0) == 2.0  # the fourth slot is still free
    assert rate.estimate(position=4, running=0) == pytest.approx(2.5)  # after one completion
    assert rate.estimate(position=0, running=4) == pytest.approx(2.5)
    assert rate.estimate(position=7, running=4) == pytest.approx(6.0)
    assert rate.drain_s(0, 4) == 0.0 and rate.drain_s(8, 4) == pytest.approx(6.0)


def test_sequential_jobs_make_one_slot():
    rate = ServiceRate.of([(float(t), 1.0) for t in range(1, 11)])  # back to back, one at a time
    assert rate.slots == 1 and rate.jobs_per_s == pytest.approx(1.0)
