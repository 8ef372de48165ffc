"""Retries in a real gateway: a try reset mid-request or left unanswered is retried on another
endpoint, in another zone, without the client noticing; a body too large to keep is not replayed."""

from __future__ import annotations

import httpx
import trio

from gateway.lb.balancer import BalancerSet
from gateway.lb.policy import HealthCheckPolicy, ServicePolicy, TimeoutPolicy
from gateway.retrying import MAX_REPLAY_BYTES
from tests.integration.failover.support import (
    EAST_A,
    bad_and_good,
    serve_resetting,
    serve_silent,
    start_gateway,
)
from tests.integration.gateway.support import metric_value, serve_hypercorn

HOST = "127.0.0.1"
# No active checks here: these tests are about what a request's own tries do.
QUIET = ServicePolicy(health_check=HealthCheckPolicy(enabled=False))


async def test_a_reset_mid_request_is_retried_in_the_other_zone(gateway_pki):
    seen: list[int] = []
    async with trio.open_nursery() as nursery:
        bad = await serve_resetting(nursery, HOST, seen)
        good = await serve_hypercorn(nursery, HOST)
        catalog = bad_and_good(bad, good, "bad")
        gateway = await start_gateway(nursery, gateway_pki, catalog, EAST_A, BalancerSet({"echo.demo": QUIET}))
        host, port = gateway.addresses["outbound"]
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as client:
            # A body larger than the replay buffer has gone to the resetting endpoint: not retried.
            big = b"x" * (MAX_REPLAY_BYTES + 1)
            response = await client.put("/echo", content=big, headers={"host": "echo.demo"})
            assert response.status_code == 502, response.text
            assert response.headers["x-isthmus-reason"] == "upstream-reset"
            assert seen == [len(big)]
            # A small body is kept and replayed to the endpoint in the other zone.
            response = await client.put("/echo", content=b"y" * 1000, headers={"host": "echo.demo"})
            assert response.status_code == 200, response.text
            assert response.content == b"y" * 1000
            assert seen[-1] == 1000
            # A GET whose endpoint resets it comes back 200 from the other zone.
            response = await client.get("/headers", headers={"host": "echo.demo"})
            assert response.status_code == 200
            assert len(seen) == 3
            # Three gateway errors in a row ejected the resetting endpoint: no more tries go there.
            for _ in range(10):
                assert (await client.get("/headers", headers={"host": "echo.demo"})).status_code == 200
            assert len(seen) == 3
        assert metric_value(gateway, "isthmus_retries_total", destination_service="echo.demo", reason="reset") == 2
        nursery.cancel_scope.cancel()


async def test_a_silent_endpoint_costs_one_per_try_timeout_then_the_request_succeeds(gateway_pki):
    policy = ServicePolicy(health_check=HealthCheckPolicy(enabled=False),
                           timeout=TimeoutPolicy(per_try_timeout_s=0.3))
    async with trio.open_nursery() as nursery:
        silent = await serve_silent(nursery, HOST)
        good = await serve_hypercorn(nursery, HOST)
        catalog = bad_and_good(silent, good, "silent")
        gateway = await start_gateway(nursery, gateway_pki, catalog, EAST_A, BalancerSet({"echo.demo": policy}))
        host, port = gateway.addresses["outbound"]
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as client:
            started = trio.current_time()
            response = await client.get("/headers", headers={"host": "echo.demo"})
            elapsed = trio.current_time() - started
        assert response.status_code == 200
        assert 0.3 <= elapsed < 1.5
        # The timed-out try was retried: no request ended with 504.
        assert metric_value(gateway, "isthmus_timeouts_total", destination_service="echo.demo") == 0
        assert metric_value(gateway, "isthmus_retries_total", destination_service="echo.demo", reason="timeout") == 1
        nursery.cancel_scope.cancel()


async def test_a_post_is_not_retried_after_a_reset(gateway_pki):
    seen: list[int] = []
    async with trio.open_nursery() as nursery:
        bad = await serve_resetting(nursery, HOST, seen)
        good = await serve_hypercorn(nursery, HOST)
        catalog = bad_and_good(bad, good, "bad")
        gateway = await start_gateway(nursery, gateway_pki, catalog, EAST_A, BalancerSet({"echo.demo": QUIET}))
        host, port = gateway.addresses["outbound"]
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as client:
            response = await client.post("/echo", content=b"order", headers={"host": "echo.demo"})
        assert response.status_code == 502
        assert seen == [5]  # the endpoint may have acted on it: once is all it gets
        nursery.cancel_scope.cancel()
