"""Failover scenarios on a simulated fleet and a virtual clock: exact times of ejection and traffic shift.

Topology (DESIGN's demo): the caller is east-1's gateway in us-east/us-east-1a; `echo.demo` runs in
us-east-1a (P0), us-east-1b and behind east-2's gateway in us-east-1c (P1), and behind west-1's
gateway in eu-west (P2); `hello.demo` only behind east-2 (P1) and west-1 (P2). Requests arrive
every 5 ms (200 req/s); a refused connect is noticed in 1 ms, an answer takes 2 ms per hop; the
Isthmus defaults apply (3 consecutive gateway errors, per-try timeout 1 s, active checks and peer
probes every 1 s with a 0.5 s timeout, 2 misses).
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway.lb.health import EndpointMarkedHealthy, EndpointMarkedUnhealthy, PeerMarkedDead
from gateway.lb.outlier import EndpointEjected, EndpointReturned, Outcome
from gateway.lb.testing import (
    BLACKHOLE,
    CALLER_CLUSTER,
    CALLER_LOCALITY,
    OK,
    REFUSE,
    FakeFleet,
    SimulationResult,
    demo_balancer,
    simulate,
)


def zone_a(balancer) -> list[str]:
    return sorted(
        e.id for e in balancer._endpoints if e.cluster == CALLER_CLUSTER and e.locality == CALLER_LOCALITY
    )


def events_of(result: SimulationResult, kind: type) -> list:
    return [event for _, event in result.events if isinstance(event, kind)]


def first_tries(result: SimulationResult, start: float, end: float):
    seen, out = set(), []
    for record in sorted(result.tries, key=lambda r: (r.request, r.started)):
        if record.request not in seen:
            seen.add(record.request)
            if start <= record.started < end:
                out.append(record)
    return out


def test_zone_outage_shifts_all_traffic_to_p1_at_the_third_refusal():
    """The zone's only endpoint dies at t=1.000: tries at 1.000, 1.005 and 1.010 are refused 1 ms
    later, the third refusal ejects it at t=1.011, and every pick from then on goes to P1."""
    balancer = demo_balancer(per_zone=1)
    (dead,) = zone_a(balancer)
    fleet = FakeFleet()
    fleet.set(dead, 1.0, REFUSE)
    result = simulate(balancer, fleet, until=3.0, rng=random.Random(1))

    (ejected,) = events_of(result, EndpointEjected)
    assert ejected.key == dead and ejected.at == pytest.approx(1.011)
    assert result.last_try_to([dead], 1.0).started == pytest.approx(1.010)
    assert {r.level for r in result.picks_after(1.011)} == {1}
    # The failed tries were retried in another locality: no client saw an error.
    assert result.failed_requests() == []
    assert result.first_success_elsewhere([dead], 1.0).ended <= 1.005 + 1e-9


def test_zone_outage_of_three_endpoints_is_over_within_100_ms():
    balancer = demo_balancer(per_zone=3)
    dead = zone_a(balancer)
    fleet = FakeFleet()
    fleet.set(dead, 1.0, REFUSE)
    result = simulate(balancer, fleet, until=3.0, rng=random.Random(1))

    ejections = events_of(result, EndpointEjected)
    assert sorted(e.key for e in ejections) == dead
    last = max(e.at for e in ejections)
    # Nine refused tries are the least that can eject three endpoints: 1.000 + 8 x 5 ms + 1 ms.
    assert 1.041 - 1e-9 <= last <= 1.100
    assert result.last_try_to(dead, 1.0).started < last
    assert {r.level for r in result.picks_after(last)} == {1}
    assert result.failed_requests() == []


def test_blackholed_zone_moves_at_the_third_timeout():
    """From t=1.000 the zone's endpoint accepts and never answers: the tries of 1.000, 1.005 and
    1.010 time out at 2.000, 2.005 and 2.010 (per-try timeout 1 s); the third ejects it at 2.010.
    The active check of t=1.0 missed at 1.5 and the one of t=2.0 at 2.5: unhealthy at 2.5."""
    balancer = demo_balancer(per_zone=1)
    (dead,) = zone_a(balancer)
    fleet = FakeFleet()
    fleet.set(dead, 1.0, BLACKHOLE)
    result = simulate(balancer, fleet, until=4.0, rng=random.Random(1))

    (ejected,) = events_of(result, EndpointEjected)
    assert ejected.at == pytest.approx(2.010)
    assert events_of(result, EndpointMarkedUnhealthy) == [EndpointMarkedUnhealthy(dead, 2.5)]
    # The request arriving at the very instant of ejection (2.010) may still be sent there.
    assert result.last_try_to([dead], 1.0).started == pytest.approx(2.010)
    assert {r.level for r in result.picks_after(2.010 + 1e-9)} == {1}
    # Retried after its per-try timeout, the first request succeeds elsewhere 1 s after the fault.
    assert result.first_success_elsewhere([dead], 1.0).ended == pytest.approx(2.002, abs=0.0021)
    assert result.failed_requests() == []


def test_brownout_least_request_steers_away_from_slow_endpoints():
    """Half of the zone answers in 300 ms instead of 2 ms: nothing fails, nothing is ejected,
    traffic stays in the zone, and power-of-two-choices sends the slow half far less than half."""
    balancer = demo_balancer(per_zone=4)
    slow = zone_a(balancer)[:2]
    fleet = FakeFleet()
    fleet.set(slow, 1.0, OK, latency_s=0.3)
    result = simulate(balancer, fleet, until=11.0, rng=random.Random(1))

    window = result.picks_after(2.0)
    share = sum(r.key in slow for r in window) / len(window)
    assert share < 0.25
    assert {r.level for r in window} == {0}
    assert events_of(result, EndpointEjected) == []
    assert result.failed_requests() == []


def test_gateway_loss_removes_the_cluster_within_3_s_by_probes():
    """east-2's gateway goes dark at t=0.2 (after its probe of t=0.1 answered). One request a
    second: the probes of 1.1 and 2.1 time out at 1.6 and 2.6, the peer is dead at 2.6 (2.4 s
    after the fault), and from then on `hello.demo` goes to west-1 (P2)."""
    balancer = demo_balancer("hello.demo")
    fleet = FakeFleet()
    fleet.set("gateway:east-2", 0.2, BLACKHOLE)
    result = simulate(balancer, fleet, until=6.0, rate_per_s=1.0, start=0.1, rng=random.Random(1))

    assert events_of(result, PeerMarkedDead) == [PeerMarkedDead("east-2", pytest.approx(2.6))]
    assert 2.6 - 0.2 <= 3.0
    assert {r.key for r in result.picks_after(2.6)} == {"gateway:west-1"}
    assert result.last_try_to(["gateway:east-2"], 0.2).started == pytest.approx(2.1)
    assert result.failed_requests() == []  # each timed-out try was retried at west-1


def test_flapping_endpoint_stays_out_longer_each_time():
    balancer = demo_balancer(per_zone=1)
    (flappy,) = zone_a(balancer)
    rng = random.Random(1)

    def fail_three(t):
        for _ in range(3):
            balancer.pick(t, rng)
            balancer.report(flappy, Outcome.CONNECT_FAILURE, t)

    fail_three(0.0)
    assert balancer.snapshot(4.999).loads[0] == 0
    assert balancer.snapshot(5.0).loads[0] == 100
    fail_three(5.5)  # fails again half a second after returning: 2 x 5 s
    assert balancer.snapshot(15.4).loads[0] == 0
    assert balancer.snapshot(15.5).loads[0] == 100
    fail_three(16.0)  # third time: 3 x 5 s
    assert balancer.snapshot(30.999).loads[0] == 0
    fail_three(131.0)  # 100 s of good behaviour later: back to 5 s
    events = [e for e in balancer.drain_events() if isinstance(e, (EndpointEjected, EndpointReturned))]
    ejections = [(e.at, e.returns_at) for e in events if isinstance(e, EndpointEjected)]
    assert ejections == [(0.0, 5.0), (5.5, 15.5), (16.0, 31.0), (131.0, 136.0)]
    assert [e.at for e in events if isinstance(e, EndpointReturned)] == [5.0, 15.5, 31.0]


@pytest.mark.parametrize(("healthy", "to_p0"), [(100, 100), (72, 100), (71, 99), (50, 70), (25, 35), (0, 0)])
def test_partial_outage_spills_over_as_envoys_table(healthy, to_p0):
    """100 endpoints in the zone, `100 - healthy` of them ejected: P0/P1 loads as Envoy's table."""
    balancer = demo_balancer(per_zone=100)
    for endpoint_id in zone_a(balancer)[healthy:]:
        for _ in range(3):
            balancer.report(endpoint_id, Outcome.CONNECT_FAILURE, 1.0)
    assert balancer.snapshot(1.0).loads == (to_p0, 100 - to_p0, 0)


def test_partial_outage_traffic_proportions_follow_the_loads():
    """Half of ten zone endpoints die at t=1: after their ejection P0 is 70 % healthy by Envoy's
    arithmetic (140 x 5 // 10) and new requests split 70/30 between the zone and P1."""
    balancer = demo_balancer(per_zone=10)
    fleet = FakeFleet()
    fleet.set(zone_a(balancer)[:5], 1.0, REFUSE)
    result = simulate(balancer, fleet, until=6.0, rng=random.Random(1))

    last_ejection = max(e.at for e in events_of(result, EndpointEjected))
    assert len(events_of(result, EndpointEjected)) == 5 and last_ejection < 1.5
    assert balancer.snapshot(3.0).loads == (70, 30, 0)
    window = first_tries(result, last_ejection, 5.9)
    share_p0 = Counter(r.level for r in window)[0] / len(window)
    assert abs(share_p0 - 0.70) < 0.05
    assert result.failed_requests() == []


def test_recovery_brings_traffic_back_to_the_zone_when_its_health_checks_pass():
    """The endpoint dies at 1.0 (ejected 1.011 until 6.011; checks mark it unhealthy at 2.001) and
    returns at 3.0 (checks of 3.0 and 4.0 pass: healthy at 4.002). Passing its checks ends the
    ejection early (Envoy's successful_active_health_check_uneject_host): back in P0 at 4.002."""
    balancer = demo_balancer(per_zone=1)
    (endpoint,) = zone_a(balancer)
    fleet = FakeFleet()
    fleet.set(endpoint, 1.0, REFUSE)
    fleet.set(endpoint, 3.0, OK)
    result = simulate(balancer, fleet, until=8.0, rng=random.Random(1))

    assert events_of(result, EndpointMarkedUnhealthy) == [
        EndpointMarkedUnhealthy(endpoint, pytest.approx(2.001))
    ]
    assert events_of(result, EndpointMarkedHealthy) == [EndpointMarkedHealthy(endpoint, pytest.approx(4.002))]
    assert events_of(result, EndpointReturned) == [EndpointReturned(endpoint, pytest.approx(4.002))]
    assert {r.level for r in result.tries if 1.011 <= r.started < 4.002} == {1}
    assert {r.level for r in result.picks_after(4.003)} == {0}
    assert result.failed_requests() == []


def test_envoy_defaults_leave_a_dead_zone_in_rotation():
    """The same zone outage with Envoy's outlier defaults: one ejection (max 10 %), after 5 errors,
    and the other two dead endpoints keep P0 at 93 % health, so first tries keep failing."""
    from gateway.lb.policy import ServicePolicy

    balancer = demo_balancer(per_zone=3, policy=ServicePolicy.envoy_defaults())
    dead = zone_a(balancer)
    fleet = FakeFleet()
    fleet.set(dead, 1.0, REFUSE)
    result = simulate(balancer, fleet, until=20.0, rng=random.Random(1), peer_probes=False)

    assert len(events_of(result, EndpointEjected)) == 1
    assert balancer.snapshot(20.0).loads == (93, 7, 0)
    assert result.last_try_to(dead, 1.0).started > 19.9
