"""Catalog reloads and draining: in-flight work finishes, new work sees the new state."""

from __future__ import annotations

import attrs
import httpx
import pytest
import trio

from tests.integration.gateway.support import RawH2Client, eventually


async def test_catalog_reload_keeps_in_flight_requests_on_their_table(topology):
    results = {}
    async with httpx.AsyncClient(base_url=topology.outbound, timeout=10) as client:

        async def slow() -> None:
            results["slow"] = await client.get("/slow/0.5", headers={"host": "echo.demo"})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow)
            await eventually(lambda: topology.west.proxy.in_flight >= 1)
            # west-1 stops knowing echo.demo's endpoints while the slow request is in flight.
            endpoints = {k: e for k, e in topology.west_catalog.endpoints.items() if e.service != "echo.demo"}
            topology.west.apply_catalog(attrs.evolve(topology.west_catalog, revision=2, endpoints=endpoints))
            after = await client.get("/headers", headers={"host": "echo.demo"})
    assert results["slow"].status_code == 200 and results["slow"].text == "slow"
    assert after.status_code == 503
    assert after.headers["x-isthmus-reason"] == "no-endpoints"
    assert after.headers["x-isthmus-cluster"] == "west-1"
    assert topology.west.catalog.revision == 2


async def test_drain_finishes_in_flight_requests_then_refuses_new_connections(topology):
    east = topology.east
    host, port = east.addresses["outbound"]
    results = {}
    h2c = await RawH2Client.connect((host, port))
    async with h2c.stream, httpx.AsyncClient(base_url=topology.outbound, timeout=10) as h1:

        async def slow_h1() -> None:
            results["h1"] = await h1.get("/slow/0.5", headers={"host": "echo.demo"})

        async def slow_h2() -> None:
            results["h2"] = await h2c.get("echo.demo", "/slow/0.5")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow_h1)
            nursery.start_soon(slow_h2)
            await eventually(lambda: east.proxy.in_flight >= 2)
            start = trio.current_time()
            await east.drain()
            took = trio.current_time() - start
    assert results["h1"].status_code == 200 and results["h1"].headers["connection"] == "close"
    assert results["h2"] == (200, b"slow")
    assert h2c.goaway is not None and h2c.goaway.error_code == 0  # GOAWAY(NO_ERROR), then the response
    assert took < east.config.drain_timeout_s
    assert not east.ready
    with pytest.raises(OSError):
        await trio.open_tcp_stream(host, port)


async def test_drain_gives_up_at_its_deadline(topology):
    east = topology.east
    async with httpx.AsyncClient(base_url=topology.outbound, timeout=10) as client:
        async with trio.open_nursery() as nursery:

            async def too_slow() -> None:
                with pytest.raises(httpx.HTTPError):
                    await client.get("/slow/5", headers={"host": "echo.demo"})

            nursery.start_soon(too_slow)
            await eventually(lambda: east.proxy.in_flight >= 1)
            start = trio.current_time()
            await east.drain(deadline_s=0.3)
            assert 0.25 <= trio.current_time() - start < 1.5


async def test_a_service_not_exported_to_the_caller_is_403_at_the_east_west_gateway(topology):
    from registry.model import Export

    exports = {**topology.west_catalog.exports, "echo.demo": Export("echo.demo", ["east-2"])}
    topology.west.apply_catalog(attrs.evolve(topology.west_catalog, revision=2, exports=exports))
    async with httpx.AsyncClient(base_url=topology.outbound) as client:
        denied = await client.get("/headers", headers={"host": "echo.demo"})
        allowed = await client.get("/headers", headers={"host": "h2echo.demo"})
    assert denied.status_code == 403
    assert denied.headers["x-isthmus-reason"] == "forbidden"
    assert denied.headers["x-isthmus-cluster"] == "west-1"
    assert allowed.status_code == 200


async def test_a_failing_catalog_source_leaves_the_last_catalog_serving(gateway_pki, nursery):
    from gateway.errors import ConfigInvalid
    from gateway.server import serve_gateway
    from tests.integration.gateway.support import EAST, catalogs, gateway_config

    east_catalog, _ = catalogs("127.0.0.1:9", {name: 9 for name in ("http", "grpc", "tcp", "tls", "closed",
                                                                      "garbage", "reset")})
    failed = trio.Event()

    class FlakySource:
        async def __aiter__(self):
            yield east_catalog
            await failed.wait()
            raise ConfigInvalid("control plane stream broke")

    gateway = await nursery.start(serve_gateway, gateway_config(gateway_pki, "east-1", EAST), FlakySource())
    failed.set()
    await eventually(lambda: gateway.stale_reason is not None)
    host, port = gateway.addresses["admin"]
    async with httpx.AsyncClient() as client:
        state = (await client.get(f"http://{host}:{port}/catalog")).json()
        ready = await client.get(f"http://{host}:{port}/ready")
    assert state["stale"] == "control plane stream broke"
    assert state["catalog"]["revision"] == 1
    assert ready.status_code == 200
