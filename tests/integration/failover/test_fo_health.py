"""Active health checks and gateway-pair probes in real gateways: a hung endpoint leaves rotation
before requests pay timeouts for it; a peer gateway answers probes with its healthy-endpoint counts
and, once dead, leaves rotation within 3 s."""

from __future__ import annotations

import httpx
import trio

from gateway.lb.balancer import BalancerSet
from gateway.lb.policy import HealthCheckPolicy, ServicePolicy
from registry.model import Endpoint, Locality, Peer
from tests.integration.failover.support import (
    EAST_A,
    bad_and_good,
    local_catalog,
    serve_silent,
    start_gateway,
)
from tests.integration.gateway.support import eventually, metric_value, serve_hypercorn

HOST = "127.0.0.1"
WEST = Locality("eu-west", "eu-west-1a")


async def test_a_hung_endpoint_fails_its_checks_and_takes_no_more_requests(gateway_pki):
    checks = HealthCheckPolicy(interval_s=0.2, timeout_s=0.1, unhealthy_threshold=2, healthy_threshold=2)
    balancers = BalancerSet({"echo.demo": ServicePolicy(health_check=checks)})
    async with trio.open_nursery() as nursery:
        silent = await serve_silent(nursery, HOST)
        good = await serve_hypercorn(nursery, HOST)
        catalog = bad_and_good(silent, good, "silent")
        gateway = await start_gateway(nursery, gateway_pki, catalog, EAST_A, balancers)
        started = trio.current_time()
        await eventually(lambda: not gateway.failover.health.healthy("east-1/silent"), timeout_s=3)
        # Two failed checks: at most one interval of phase, then two intervals (+ the last timeout).
        assert trio.current_time() - started < 0.2 + 2 * 0.2 + 0.1 + 0.3
        assert gateway.failover.health.healthy("east-1/good")
        host, port = gateway.addresses["outbound"]
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as client:
            for _ in range(5):
                response = await client.get("/headers", headers={"host": "echo.demo"})
                assert response.status_code == 200
        assert metric_value(gateway, "isthmus_timeouts_total") == 0
        (balancer,) = balancers.balancers()
        assert balancer.snapshot().unhealthy == ("east-1/silent",)
        nursery.cancel_scope.cancel()


async def test_peer_probes_carry_healthy_counts_and_a_dead_peer_leaves_rotation_within_3s(gateway_pki):
    async with trio.open_nursery() as nursery:
        good = await serve_hypercorn(nursery, HOST)
        remote = Endpoint("echo.demo", "west-1", HOST, good, WEST, id="west-1/echo")
        with trio.CancelScope() as west_scope:
            async with trio.open_nursery() as west_nursery:
                west = await start_gateway(west_nursery, gateway_pki, local_catalog("west-1", [remote]), WEST,
                                           BalancerSet())
                peer = Peer("west-1", "eu-west", ("eu-west-1a",),
                            gateway="{}:{}".format(*west.addresses["eastwest"]))
                east_catalog = local_catalog("east-1", [remote], peers={"west-1": peer})
                east = await start_gateway(nursery, gateway_pki, east_catalog, EAST_A, BalancerSet())
                host, port = east.addresses["outbound"]
                async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as client:
                    assert (await client.get("/headers", headers={"host": "echo.demo"})).status_code == 200
                probes = east.failover.prober.probes
                await eventually(lambda: "west-1" in probes and probes["west-1"].successes > 0, timeout_s=3)
                assert probes["west-1"].alive
                assert probes["west-1"].healthy == {"echo.demo": 1}
                assert probes["west-1"].rtt_s is not None and probes["west-1"].rtt_s < 0.5
                west_scope.cancel()
        died = trio.current_time()
        await eventually(lambda: not probes["west-1"].alive, timeout_s=4)
        assert trio.current_time() - died <= 3.0
        (balancer,) = east.picker_factory.balancers()
        assert balancer.peers["west-1"].alive is False
        await eventually(lambda: metric_value(east, "isthmus_endpoints", cluster="west-1", state="unhealthy") == 1,
                         timeout_s=2)
        nursery.cancel_scope.cancel()
