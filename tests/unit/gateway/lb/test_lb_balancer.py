"""`Balancer`: priorities from locality, remote clusters weighed by healthy backends, picks, reports, plans."""

from __future__ import annotations

import random
from collections import Counter

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import NoHealthyEndpoint, Overloaded
from gateway.lb.balancer import Balancer
from gateway.lb.health import PeerView
from gateway.lb.outlier import EndpointEjected, Outcome
from gateway.lb.policy import CircuitBreakerPolicy, FailoverPolicy, RetryPolicy, ServicePolicy
from gateway.lb.testing import CALLER_CLUSTER, CALLER_LOCALITY, demo_balancer, demo_endpoints
from registry.model import Catalog, Endpoint, Health, Locality

ZONE_A = Locality("us-east", "us-east-1a")
ZONE_B = Locality("us-east", "us-east-1b")


def ids_in(balancer: Balancer, locality: Locality) -> list[str]:
    return [e.id for e in balancer._endpoints if e.locality == locality and e.cluster == CALLER_CLUSTER]


def eject(balancer: Balancer, endpoint_id: str, now: float) -> None:
    for _ in range(3):
        balancer.report(endpoint_id, Outcome.CONNECT_FAILURE, now)


def test_priorities_same_zone_then_region_then_other_regions():
    snap = demo_balancer().snapshot(0.0)
    assert [len(level.hosts) for level in snap.levels] == [3, 4, 1]
    assert snap.levels[1].hosts[-1] == "gateway:east-2"  # remote cluster in our region: one host, P1
    assert snap.levels[2].hosts == ("gateway:west-1",)
    assert snap.loads == (100, 0, 0)
    assert snap.active_priority == 0


def test_remote_cluster_counts_its_backends_not_one_address():
    snap = demo_balancer().snapshot(0.0)
    assert (snap.levels[1].healthy, snap.levels[1].total) == (6, 6)  # 3 local endpoints + 3 behind east-2
    assert (snap.levels[2].healthy, snap.levels[2].total) == (3, 3)


def test_probe_counts_weigh_remote_clusters_and_dead_peers_leave_rotation():
    b = demo_balancer("hello.demo")  # east-2 (P1) and west-1 (P2) only
    b.update_peers({"east-2": PeerView("east-2", healthy={"hello.demo": 1})}, 0.0)
    snap = b.snapshot(0.0)
    assert (snap.levels[1].healthy, snap.levels[1].total) == (1, 3)
    assert snap.loads == (0, 46, 54)  # 140 * 1 // 3 = 46
    b.update_peers({"east-2": PeerView("east-2", alive=False)}, 1.0)
    assert b.snapshot(1.0).loads == (0, 0, 100)
    rng = random.Random(1)
    assert {b.pick(1.0, rng).cluster for _ in range(50)} == {"west-1"}


def test_failover_order_comes_from_the_policy_then_rtt():
    endpoints = demo_endpoints() + [
        Endpoint("echo.demo", "south-1", "127.0.4.11", 8080, Locality("ap-south", "ap-south-1a")),
    ]
    policy = ServicePolicy(failover=FailoverPolicy(regions=("ap-south",)))
    b = Balancer("echo.demo", endpoints, cluster=CALLER_CLUSTER, locality=CALLER_LOCALITY, policy=policy)
    assert b.level_of("south-1/127.0.4.11:8080") == 2
    assert b.level_of("west-1/127.0.3.11:8080") == 3
    b = Balancer("echo.demo", endpoints, cluster=CALLER_CLUSTER, locality=CALLER_LOCALITY)
    b.update_peers(
        {"south-1": PeerView("south-1", rtt_s=0.050), "west-1": PeerView("west-1", rtt_s=0.090)}, 0.0
    )
    assert b.level_of("south-1/127.0.4.11:8080") == 2
    b.update_peers(
        {"south-1": PeerView("south-1", rtt_s=0.150), "west-1": PeerView("west-1", rtt_s=0.090)}, 1.0
    )
    assert b.level_of("west-1/127.0.3.11:8080") == 2


def test_catalog_health_is_honoured_and_draining_does_not_count():
    endpoints = demo_endpoints()
    zone_a = [e for e in endpoints if e.locality == ZONE_A and e.cluster == CALLER_CLUSTER]
    changed = {zone_a[0].id: Health.UNHEALTHY, zone_a[1].id: Health.DRAINING}
    endpoints = [attrs.evolve(e, health=changed[e.id]) if e.id in changed else e for e in endpoints]
    b = Balancer("echo.demo", endpoints, cluster=CALLER_CLUSTER, locality=CALLER_LOCALITY)
    level0 = b.snapshot(0.0).levels[0]
    assert (level0.healthy, level0.total) == (1, 2)  # draining excluded, unhealthy counted
    assert b.snapshot(0.0).loads == (70, 30, 0)
    rng = random.Random(3)
    picked = Counter(b.pick(0.0, rng).id for _ in range(300))
    assert zone_a[0].id not in picked and zone_a[1].id not in picked


def test_ejection_moves_traffic_to_the_next_priority():
    b = demo_balancer(per_zone=1)
    (only,) = ids_in(b, ZONE_A)
    eject(b, only, 1.0)
    assert b.drain_events() == [EndpointEjected(only, 1.0, 6.0, "consecutive-gateway-errors", 1)]
    assert b.snapshot(1.0).loads == (0, 100, 0)
    rng = random.Random(1)
    assert all(b.level_of(b.pick(1.0, rng).id) == 1 for _ in range(50))
    assert b.snapshot().loads == (0, 100, 0)  # at the latest time seen (1.0)
    assert b.snapshot(6.0).loads == (100, 0, 0)


def test_active_check_verdicts_count_like_health():
    b = demo_balancer()
    for endpoint_id in ids_in(b, ZONE_A)[:2]:
        b.set_endpoint_health(endpoint_id, False, 1.0)
    snap = b.snapshot(1.0)
    assert snap.loads == (46, 54, 0)
    assert len(snap.unhealthy) == 2


def test_retry_goes_to_another_host_in_another_locality():
    b = demo_balancer()
    rng = random.Random(4)
    first = b.pick(0.0, rng)
    assert first.locality == ZONE_A
    for _ in range(50):
        retry = b.pick(0.0, rng, exclude=[first.id])
        assert retry.id != first.id
        assert b.level_of(retry.id) == 1  # P0 is fully healthy, yet the retry leaves the zone
    no_pref = Balancer(
        "echo.demo",
        b._endpoints,
        cluster=CALLER_CLUSTER,
        locality=CALLER_LOCALITY,
        policy=ServicePolicy(retry=RetryPolicy(prefer_other_locality=False)),
    )
    retries = {no_pref.pick(0.0, rng, exclude=[first.id]).id for _ in range(50)}
    assert first.id not in retries and {no_pref.level_of(i) for i in retries} == {0}


def test_when_everything_was_tried_a_retry_still_gets_an_endpoint():
    b = demo_balancer(per_zone=1)
    everything = [e.id for e in b._endpoints]
    assert b.pick(0.0, random.Random(1), exclude=everything).id in everything


def test_panic_balances_over_ejected_hosts_and_no_panic_means_503():
    b = demo_balancer(per_zone=1)
    for e in b._endpoints:
        eject(b, e.id, 1.0)
    snap = b.snapshot(1.0)
    assert snap.loads == (100, 0, 0) and snap.levels[0].panic
    assert b.pick(1.0, random.Random(1)).locality == ZONE_A
    strict = ServicePolicy(failover=FailoverPolicy(panic_threshold_percent=0))
    b = demo_balancer(per_zone=1, policy=strict)
    for e in b._endpoints:
        eject(b, e.id, 1.0)
    with pytest.raises(NoHealthyEndpoint, match="^echo.demo: no healthy endpoint in any locality$"):
        b.pick(1.0, random.Random(1))


def test_no_endpoints_is_503_no_endpoints():
    b = Balancer("nothing.demo", [], cluster=CALLER_CLUSTER, locality=CALLER_LOCALITY)
    with pytest.raises(NoHealthyEndpoint) as info:
        b.pick(0.0, random.Random(1))
    assert (info.value.status, info.value.reason) == (503, "no-endpoints")
    assert str(info.value) == "nothing.demo: no endpoints in the catalog"


def test_update_keeps_state_of_endpoints_that_remain():
    b = demo_balancer()
    zone_a = ids_in(b, ZONE_A)
    eject(b, zone_a[0], 1.0)
    b.pick(1.0, random.Random(1))
    remaining = [e for e in b._endpoints if e.id != zone_a[1]]
    b.update(remaining, 2.0)
    snap = b.snapshot(2.0)
    assert snap.ejected == (zone_a[0],)
    assert (snap.levels[0].healthy, snap.levels[0].total) == (1, 2)
    b.report(zone_a[1], Outcome.SUCCESS, 2.0)  # an in-flight request to a removed endpoint: ignored


def test_report_accepts_status_codes_and_strings():
    b = demo_balancer(per_zone=1)
    (only,) = ids_in(b, ZONE_A)
    b.report(only, 503, 0.0)
    b.report(only, "reset", 0.0)
    b.report(only, Outcome.TIMEOUT, 0.0)
    assert b.snapshot(0.0).ejected == (only,)


def test_from_catalog_uses_the_catalogs_cluster_and_service():
    endpoints = demo_endpoints() + demo_endpoints("hello.demo")
    catalog = Catalog("east-1", endpoints={e.id + e.service: e for e in endpoints})
    b = Balancer.from_catalog(catalog, "echo.demo", locality=CALLER_LOCALITY)
    assert len(b._endpoints) == 12
    assert "Balancer echo.demo from east-1" in repr(b)


def test_request_plan_retries_elsewhere_and_releases_everything():
    b = demo_balancer(per_zone=1)
    rng = random.Random(2)
    plan = b.begin(0.0, "GET")
    first = plan.pick(0.0, rng)
    assert plan.try_deadline(0.0) == 1.0
    assert plan.finish_try(Outcome.CONNECT_FAILURE, 0.001).retry
    assert b.budget.active_retries == 1
    second = plan.pick(0.001, rng)
    assert second.locality != first.locality
    assert not plan.finish_try(Outcome.SUCCESS, 0.003).retry
    plan.close(0.003)
    plan.close(0.003)
    assert (b.budget.active_requests, b.budget.active_retries) == (0, 0)
    assert all(h.active == 0 for h in b._hosts.values())


def test_request_plan_closed_mid_try_reports_a_cancel():
    b = demo_balancer(per_zone=1)
    plan = b.begin(0.0)
    plan.pick(0.0, random.Random(1))
    plan.close(0.5)
    assert all(h.active == 0 for h in b._hosts.values())


def test_circuit_breaker_rejects_requests_over_the_limit():
    b = demo_balancer(policy=ServicePolicy(circuit_breaker=CircuitBreakerPolicy(max_requests=2)))
    plans = [b.begin(0.0), b.begin(0.0)]
    with pytest.raises(Overloaded):
        b.begin(0.0)
    plans[0].close(0.1)
    b.begin(0.1)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 11), st.sampled_from(list(Outcome))), max_size=60),
    st.integers(0, 2**32),
)
def test_ejected_hosts_are_never_picked_unless_their_level_panics(reports, seed):
    b = demo_balancer()
    rng = random.Random(seed)
    endpoints = list(b._endpoints)
    now = 0.0
    for index, outcome in reports:
        now += 0.01
        b.report(endpoints[index].id, outcome, now)
        snap = b.snapshot(now)
        endpoint = b.pick(now, rng)
        key = b.key_of(endpoint.id)
        level = b.level_of(endpoint.id)
        if key in snap.ejected:
            assert snap.levels[level].panic
        assert snap.levels[level].load_percent > 0
        b.report(endpoint.id, Outcome.CANCELLED, now)
    assert sum(b.snapshot(now).loads) == 100


def test_balancer_set_keeps_outlier_state_across_catalog_reloads():
    from gateway.lb.balancer import BalancerSet

    balancers = BalancerSet({"echo.demo": ServicePolicy(retry=RetryPolicy(attempts=2))})
    endpoints = demo_endpoints()
    first = balancers(endpoints, CALLER_CLUSTER, CALLER_LOCALITY)
    assert first.policy.retry.attempts == 2
    victim = [e.id for e in endpoints if e.locality == ZONE_A][0]
    eject(first, victim, 1.0)
    fewer = [e for e in endpoints if e.id != [e.id for e in endpoints if e.locality == ZONE_A][1]]
    again = balancers(fewer, CALLER_CLUSTER, CALLER_LOCALITY)  # a new routing table after a reload
    assert again is first
    assert again.snapshot(2.0).ejected == (victim,)
    assert len(again._endpoints) == 11
    local = balancers([e for e in endpoints if e.cluster == CALLER_CLUSTER], CALLER_CLUSTER, CALLER_LOCALITY)
    assert local is not first  # the east-west listener's local-only view is its own
    balancers.update_peers({"west-1": PeerView("west-1", alive=False)}, 3.0)
    assert first.snapshot(3.0).levels[2].healthy == 0
    balancers.set_policies({})
    assert balancers(fewer, CALLER_CLUSTER, CALLER_LOCALITY) is not first
    assert len(balancers.balancers()) == 2
    with pytest.raises(NoHealthyEndpoint):
        balancers([], CALLER_CLUSTER, CALLER_LOCALITY)


def test_route_settings_override_the_service_policy():
    retry, timeout = ServicePolicy().for_route(
        timeout_s=3.0, attempts=1, per_try_timeout_s=0.25, retry_on=("5xx",)
    )
    assert (retry.attempts, retry.retry_on) == (1, ("5xx",))
    assert (timeout.request_timeout_s, timeout.per_try_timeout_s) == (3.0, 0.25)
    assert ServicePolicy().for_route() == (RetryPolicy(), ServicePolicy().timeout)
    b = demo_balancer(per_zone=1)
    plan = b.begin(0.0, "GET", retry=retry, timeout=timeout)
    plan.pick(0.0, random.Random(1))
    assert plan.try_deadline(0.0) == 0.25
    assert plan.finish_try(Outcome.CONNECT_FAILURE, 0.1).reason == "attempts-exhausted"


def test_an_ejected_endpoint_that_passes_its_health_checks_returns_at_once():
    """Envoy's `successful_active_health_check_uneject_host`: after a zone recovers, traffic is back
    as soon as the health checks say so, not when a (growing) ejection time runs out."""
    from gateway.lb.outlier import EndpointReturned

    balancer = demo_balancer(per_zone=1)
    (zone_a,) = ids_in(balancer, ZONE_A)
    for t in (0.0, 20.0):  # ejected twice: the second ejection would last 10 s
        eject(balancer, zone_a, t)
    balancer.set_endpoint_health(zone_a, False, 20.5)
    balancer.set_endpoint_health(zone_a, True, 22.0)
    assert any(isinstance(e, EndpointReturned) and e.key == zone_a and e.at == 22.0 for e in balancer.drain_events())
    rng = random.Random(7)
    picks = Counter(balancer.pick(22.0, rng).id for _ in range(50))
    assert picks == {zone_a: 50}


def test_without_uneject_on_healthy_check_the_ejection_runs_its_course():
    policy = ServicePolicy.from_mapping("echo.demo", {"outlier": {"uneject_on_healthy_check": False}})
    balancer = demo_balancer(policy=policy, per_zone=1)
    (zone_a,) = ids_in(balancer, ZONE_A)
    eject(balancer, zone_a, 0.0)
    balancer.set_endpoint_health(zone_a, False, 0.5)
    balancer.set_endpoint_health(zone_a, True, 2.0)
    assert zone_a not in {balancer.pick(2.0, random.Random(i)).id for i in range(30)}
    assert {balancer.pick(5.0, random.Random(i)).id for i in range(30)} == {zone_a}
