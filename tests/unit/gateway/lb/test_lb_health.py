"""Active health-check state and gateway-pair probe state: results in, state and events out."""

from __future__ import annotations

from gateway.lb.health import (
    ActiveHealthCheck,
    EndpointMarkedHealthy,
    EndpointMarkedUnhealthy,
    PeerMarkedAlive,
    PeerMarkedDead,
    PeerProbe,
    PeerView,
)
from gateway.lb.policy import HealthCheckPolicy, PeerProbePolicy


def test_endpoint_starts_healthy_and_needs_two_misses_to_go_out():
    check = ActiveHealthCheck("e1")
    assert check.healthy
    assert check.record(False, 1.5) is None
    assert check.record(True, 2.0) is None  # a success in between resets the count
    assert check.record(False, 3.5) is None
    assert check.record(False, 4.5) == EndpointMarkedUnhealthy("e1", 4.5)
    assert not check.healthy
    assert check.record(False, 5.5) is None  # no repeated event


def test_endpoint_needs_two_successes_to_come_back():
    check = ActiveHealthCheck("e1", HealthCheckPolicy(unhealthy_threshold=1))
    check.record(False, 1.0)
    assert check.record(True, 2.0) is None
    assert check.record(True, 3.0) == EndpointMarkedHealthy("e1", 3.0)


def test_checks_are_scheduled_on_the_interval_from_their_phase():
    check = ActiveHealthCheck("e1", now=10.0, phase_s=0.25)
    assert not check.due(10.2)
    assert check.due(10.25)
    assert check.started(10.25) == 10.75  # deadline: timeout 0.5 s
    assert not check.due(11.0)
    assert check.due(11.25)


def test_disabled_checks_are_never_due():
    assert not ActiveHealthCheck("e1", HealthCheckPolicy(enabled=False)).due(100.0)


def test_dead_peer_is_out_within_three_seconds_of_dying():
    """Probe at 0 answers, the peer dies at 0.01; probes at 1 and 2 time out at 1.5 and 2.5."""
    probe = PeerProbe("west-1")
    assert probe.due(0.0)
    probe.started(0.0)
    assert probe.record_success(0.08, 0.08, {"echo.demo": 3}) is None
    events = []
    for sent in (1.0, 2.0):
        assert probe.due(sent)
        deadline = probe.started(sent)
        events.append(probe.record_failure(deadline))
    assert events == [None, PeerMarkedDead("west-1", 2.5)]
    assert 2.5 - 0.01 <= 3.0
    assert probe.view() == PeerView("west-1", alive=False, rtt_s=0.08, healthy={"echo.demo": 3})


def test_peer_comes_back_on_the_first_answer():
    probe = PeerProbe("west-1", PeerProbePolicy(dead_after_misses=1))
    assert probe.record_failure(1.5) == PeerMarkedDead("west-1", 1.5)
    assert probe.record_success(2.1, 0.1, {"echo.demo": 2}) == PeerMarkedAlive("west-1", 2.1)
    assert probe.view().healthy_count("echo.demo") == 2
    assert probe.view().healthy_count("hello.demo") is None


def test_rtt_is_an_ewma():
    probe = PeerProbe("west-1", PeerProbePolicy(rtt_alpha=0.5))
    probe.record_success(1.0, 0.100)
    probe.record_success(2.0, 0.200)
    assert abs(probe.rtt_s - 0.150) < 1e-12
    probe.record_success(3.0, 0.150)
    assert abs(probe.rtt_s - 0.150) < 1e-12


def test_probe_answer_without_counts_keeps_the_last_counts():
    probe = PeerProbe("east-2")
    probe.record_success(1.0, 0.01, {"echo.demo": 3, "bad": -4})
    probe.record_success(2.0, 0.01)
    assert probe.view().healthy == {"echo.demo": 3, "bad": 0}
