"""The drill's arithmetic: percentiles, windows, failover and return times, SLO verdicts."""

from __future__ import annotations

import math

from scenarios.analysis import (
    Sample,
    check,
    percentile,
    time_to_failover,
    time_to_first_success_elsewhere,
    time_to_return,
    windows,
)


def s(t, ok=True, zone="us-east-1a", cluster="east-1", latency=0.002):
    return Sample(start_s=t, latency_s=latency, ok=ok, status=200 if ok else 503, idempotent=True, cluster=cluster, zone=zone)


def test_nearest_rank_percentiles():
    assert percentile([1, 2, 3, 4], 50) == 2
    assert percentile(list(range(1, 101)), 99) == 99
    assert math.isnan(percentile([], 50))


def test_failover_times_from_a_zone_outage():
    # 100 req/s; zone 1a fails at t=5.0; three failures, then everything lands in 1b from t=5.03.
    samples = [s(i / 100) for i in range(500)]
    samples += [s(5.0, ok=False), s(5.01, ok=False), s(5.02, ok=False)]
    samples += [s(5.03 + i / 100, zone="us-east-1b") for i in range(100)]
    place = {"us-east-1a"}
    assert abs(time_to_first_success_elsewhere(samples, 5.0, place) - 0.032) < 1e-9
    assert abs(time_to_failover(samples, 5.0, place) - 0.03) < 1e-9


def test_no_failover_is_reported_as_none_and_fails_the_slo():
    samples = [s(5 + i / 100, ok=False) for i in range(50)]
    assert time_to_failover(samples, 5.0, {"us-east-1a"}) is None
    verdict = check("max_time_to_failover_s", 1.0, None)
    assert verdict is not None and not verdict.held


def test_return_to_home_zone_after_restore():
    samples = [s(10 + i / 10, zone="us-east-1b") for i in range(5)] + [s(10.5, zone="us-east-1a")]
    assert time_to_return(samples, 10.0, {"us-east-1a"}) == 0.5


def test_windows_report_share_by_zone():
    samples = [s(0.1, zone="a"), s(0.2, zone="a"), s(0.3, zone="b"), s(0.4, ok=False)]
    (w,) = windows(samples)
    assert w.requests == 4
    assert w.success_ratio == 0.75
    assert w.share_by_zone == {"a": 2 / 3, "b": 1 / 3}


def test_success_ratio_slo_is_at_least():
    assert check("min_success_ratio", 0.999, 0.9995, at_least=True).held
    assert not check("min_success_ratio", 0.999, 0.998, at_least=True).held
