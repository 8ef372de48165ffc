"""The outlier detector: what ejects a host, for how long, how many, and when it returns."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.lb.outlier import (
    EjectionCapped,
    EndpointEjected,
    EndpointReturned,
    Outcome,
    OutlierDetector,
)
from gateway.lb.policy import OutlierPolicy, ServicePolicy


def detector(keys=("a", "b", "c", "d"), **policy) -> OutlierDetector:
    d = OutlierDetector(OutlierPolicy(**policy))
    d.sync(keys, 0.0)
    return d


def fail(d: OutlierDetector, key: str, times: int, t: float, outcome=Outcome.CONNECT_FAILURE):
    events = []
    for _ in range(times):
        events += d.record(key, outcome, t)
    return events


def test_third_consecutive_gateway_error_ejects_on_that_request():
    d = detector()
    assert fail(d, "a", 2, 1.0) == []
    assert not d.is_ejected("a")
    assert d.record("a", Outcome.TIMEOUT, 1.25) == [
        EndpointEjected("a", 1.25, 6.25, "consecutive-gateway-errors", 1)
    ]
    assert d.is_ejected("a")
    assert d.ejected() == ("a",)


def test_fifth_consecutive_5xx_ejects():
    d = detector()
    assert fail(d, "a", 4, 1.0, Outcome.HTTP_5XX) == []
    (event,) = d.record("a", 500, 1.0)
    assert event.reason == "consecutive-5xx"


def test_a_success_resets_the_counts_and_4xx_is_a_success():
    d = detector()
    fail(d, "a", 2, 1.0)
    d.record("a", 404, 1.0)
    assert fail(d, "a", 2, 1.0) == []
    assert not d.is_ejected("a")


def test_mixed_failures_count_towards_5xx_but_break_the_gateway_streak():
    d = detector()
    fail(d, "a", 2, 1.0, Outcome.GATEWAY_ERROR)
    d.record("a", Outcome.HTTP_5XX, 1.0)  # 500: a 5xx, not a gateway error
    fail(d, "a", 1, 1.0, Outcome.RESET)
    (event,) = d.record("a", Outcome.RESET, 1.0)  # 5th 5xx-class failure in a row
    assert event.reason == "consecutive-5xx"


def test_cancelled_says_nothing_about_the_host():
    d = detector()
    fail(d, "a", 2, 1.0)
    d.record("a", Outcome.CANCELLED, 1.0)
    assert len(fail(d, "a", 1, 1.0)) == 1


def test_ejection_time_grows_with_times_ejected_and_is_capped():
    d = detector(base_ejection_s=5.0, max_ejection_s=12.0)
    (first,) = fail(d, "a", 3, 0.0)
    assert first.returns_at == 5.0
    assert d.expire(5.0) == [EndpointReturned("a", 5.0)]
    (second,) = fail(d, "a", 3, 5.5)
    assert (second.times_ejected, second.returns_at) == (2, 15.5)
    d.expire(15.5)
    (third,) = fail(d, "a", 3, 16.0)
    assert (third.times_ejected, third.returns_at) == (3, 28.0)  # 15 s capped to 12 s


def test_times_ejected_decays_while_the_host_stays_in_rotation():
    d = detector(base_ejection_s=5.0)
    fail(d, "a", 3, 0.0)
    d.expire(5.0)
    fail(d, "a", 3, 6.0)
    d.expire(16.0)  # back at 16.0 after 10 s (times ejected 2)
    (event,) = fail(d, "a", 3, 26.0)  # two quiet base periods: 2 - 2 + 1
    assert (event.times_ejected, event.returns_at) == (1, 31.0)


def test_failures_while_ejected_do_not_extend_the_ejection():
    d = detector()
    fail(d, "a", 3, 0.0)
    assert fail(d, "a", 10, 1.0) == []
    assert d.next_return() == 5.0


def test_expire_reports_the_exact_return_time_even_when_called_late():
    d = detector()
    fail(d, "a", 3, 0.125)
    assert d.expire(5.0) == []
    assert d.expire(9.0) == [EndpointReturned("a", 5.125)]
    assert d.expire(9.0) == []


def test_a_returned_host_starts_with_clean_counts():
    d = detector()
    fail(d, "a", 3, 0.0)
    d.expire(5.0)
    assert fail(d, "a", 2, 5.0) == []


def test_max_ejection_percent_refuses_ejections_past_the_cap():
    d = detector(max_ejection_percent=50)
    fail(d, "a", 3, 0.0)
    fail(d, "b", 3, 0.0)  # 1 of 4 ejected = 25 % < 50 %: allowed
    (capped,) = fail(d, "c", 3, 0.0)  # 2 of 4 = 50 %: refused
    assert capped == EjectionCapped("c", 0.0, "consecutive-gateway-errors")
    assert d.ejected() == ("a", "b")


def test_envoy_defaults_eject_one_host_of_eight_then_stop():
    d = OutlierDetector(ServicePolicy.envoy_defaults().outlier)
    d.sync([f"h{i}" for i in range(8)], 0.0)
    assert fail(d, "h0", 4, 1.0) == []  # gateway-error detection is not enforced by default
    (event,) = fail(d, "h0", 1, 1.0)
    assert event.reason == "consecutive-5xx"
    assert isinstance(fail(d, "h1", 5, 1.0)[0], EjectionCapped)  # 1/8 = 12.5 % >= 10 %


def test_sweep_interval_returns_hosts_at_the_next_tick():
    d = OutlierDetector(OutlierPolicy(consecutive_5xx=5, base_ejection_s=30.0, interval_s=10.0))
    d.sync(["a", "b"], 0.0)
    (event,) = fail(d, "a", 5, 3.2, Outcome.HTTP_5XX)
    assert event.returns_at == pytest.approx(40.0)  # 33.2 -> next sweep at 40
    assert d.expire(39.9) == []
    assert d.expire(40.0) == [EndpointReturned("a", event.returns_at)]


def test_disabled_detectors_never_eject():
    d = detector(consecutive_5xx=0, consecutive_gateway_errors=0)
    assert fail(d, "a", 50, 0.0) == []


def test_sync_keeps_state_of_remaining_hosts_and_forgets_removed_ones():
    d = detector(keys=("a", "b"))
    fail(d, "a", 3, 0.0)
    fail(d, "b", 2, 0.0)
    d.sync(["a", "c"], 1.0)
    assert d.is_ejected("a")
    assert not d.is_ejected("c")
    assert d.record("b", Outcome.TIMEOUT, 1.0) == []  # unknown key: ignored


def test_outcome_from_status_and_strings():
    assert Outcome.from_status(200) is Outcome.SUCCESS
    assert Outcome.from_status(429) is Outcome.SUCCESS
    assert Outcome.from_status(500) is Outcome.HTTP_5XX
    assert {Outcome.from_status(s) for s in (502, 503, 504)} == {Outcome.GATEWAY_ERROR}
    assert Outcome.coerce("connect-failure") is Outcome.CONNECT_FAILURE
    assert Outcome.coerce(503) is Outcome.GATEWAY_ERROR
    with pytest.raises(ValueError):
        Outcome.coerce("exploded")


@given(st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from(list(Outcome))), max_size=200))
def test_ejected_share_never_exceeds_the_cap(steps):
    d = detector(max_ejection_percent=50)
    for i, (key, outcome) in enumerate(steps):
        d.record(key, outcome, i * 0.1)
        assert len(d.ejected()) * 100 / 4 <= 50
