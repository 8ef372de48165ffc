"""The health-check and peer-probe loops on trio's MockClock: exact virtual times of the verdicts."""

from __future__ import annotations

import json

import pytest
import trio

from gateway.errors import UpstreamConnectError
from gateway.health_checks import HealthChecker
from gateway.lb.policy import ServicePolicy
from gateway.probes import PeerProber, parse_answer, probe_answer
from registry.model import Catalog, Endpoint, Export, Health, Locality, Peer, Service

ZONE = Locality("us-east", "us-east-1a")


class ZeroRandom:
    def random(self) -> float:
        return 0.0


class FakeBalancer:
    service = "echo.demo"

    def __init__(self) -> None:
        self.verdicts: dict[str, tuple[bool, float]] = {}

    def set_endpoint_health(self, endpoint_id: str, ok: bool, now: float) -> None:
        if self.verdicts.get(endpoint_id, (True, 0.0))[0] != ok:
            self.verdicts[endpoint_id] = (ok, now)


def catalog(**extra) -> Catalog:
    endpoints = [
        Endpoint("echo.demo", "east-1", "127.0.0.1", 1, ZONE, id="dead"),
        Endpoint("echo.demo", "east-1", "127.0.0.1", 2, ZONE, id="alive"),
        Endpoint("echo.demo", "east-1", "127.0.0.1", 3, ZONE, id="draining", health=Health.DRAINING),
        Endpoint("echo.demo", "west-1", "127.0.0.1", 4, Locality("eu-west", "eu-west-1a"), id="remote"),
    ]
    return Catalog(cluster="east-1", revision=1, services={"echo.demo": Service("echo", "demo")},
                   endpoints={e.id: e for e in endpoints}, exports={"echo.demo": Export("echo.demo", ["east-2"])},
                   **extra)


async def test_an_endpoint_failing_its_checks_is_out_after_two_intervals(autojump_clock):
    balancer = FakeBalancer()
    checked: list[tuple[str, float]] = []

    async def check(endpoint, protocol, policy, *, source_address=None):
        checked.append((endpoint.id, trio.current_time()))
        return endpoint.id != "dead"

    current = catalog()
    checker = HealthChecker(cluster="east-1", catalog=lambda: current, policy_of=lambda s: ServicePolicy(),
                            balancers=lambda: [balancer], rng=ZeroRandom(), check=check)
    async with trio.open_nursery() as nursery:
        await nursery.start(checker.run)
        await trio.sleep(3.0)
        nursery.cancel_scope.cancel()
    assert sorted(checker.checks) == ["alive", "dead", "draining"]  # local endpoints only
    ok, at = balancer.verdicts["dead"]
    assert ok is False
    assert at == pytest.approx(1.0, abs=0.06)  # checks at 0 and 1 s, unhealthy_threshold 2
    assert "alive" not in balancer.verdicts
    assert [t for e, t in checked if e == "alive"][:3] == pytest.approx([0.0, 1.0, 2.0], abs=0.06)


def test_a_probe_answer_counts_healthy_local_endpoints_of_services_exported_to_the_caller():
    answer = json.loads(probe_answer(catalog(), "east-1", "east-2", lambda e: e != "dead"))
    assert answer == {"cluster": "east-1", "healthy": {"echo.demo": 1}}
    assert json.loads(probe_answer(catalog(), "east-1", "west-1", lambda e: True))["healthy"] == {}
    assert parse_answer(b'{"healthy": {"echo.demo": 1}}') == {"echo.demo": 1}
    with pytest.raises(ValueError):
        parse_answer(b'{"healthy": "lots"}')


class RefusingUpstreams:
    async def h2_conn(self, host, port, **kwargs):
        raise UpstreamConnectError(f"connect to {host}:{port}: refused")


async def test_a_peer_missing_two_probes_leaves_rotation_at_the_second_miss(autojump_clock):
    peer = Peer("west-1", "eu-west", ("eu-west-1a",), gateway="127.0.0.1:9")
    current = catalog(peers={"west-1": peer})
    pushed: list[tuple[bool, float]] = []
    prober = PeerProber(cluster="east-1", catalog=lambda: current, upstreams=RefusingUpstreams(),
                        on_views=lambda views, now: pushed.append((views["west-1"].alive, now)))
    async with trio.open_nursery() as nursery:
        await nursery.start(prober.run)
        await trio.sleep(2.5)
        nursery.cancel_scope.cancel()
    assert pushed[0] == (True, pytest.approx(0.0, abs=0.06))
    assert pushed[-1][0] is False
    assert pushed[-1][1] == pytest.approx(1.0, abs=0.06)  # probes at 0 and 1 s, dead_after_misses 2
