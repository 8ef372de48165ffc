"""The dashboard under hypercorn, scraping two live gateways under traffic and one that is down."""

from __future__ import annotations

import httpx

from tests.integration.dashboard.support import (
    control_target,
    dead_target,
    east_local_catalog,
    open_live_dashboard,
    overview_until,
    service,
    zone_lost_catalog,
)


async def test_live_gateways_show_traffic_and_a_dead_one_is_unreachable(dashboard_pki):
    async with open_live_dashboard(dashboard_pki, extra_targets=[dead_target(), control_target()]) as live:
        view = await overview_until(live.url, lambda v: (s := service(v, "echo.demo")) is not None and s["rps"] > 0
                                    and s["p99_ms"] is not None)  # fmt: skip
        echo = service(view, "echo.demo")
        assert 0 < echo["success_rate"] < 1  # the /status/500 calls count as failures
        assert echo["share"][0]["cluster"] == "west-1"
        assert service(view, "nowhere.demo")["success_rate"] == 0
        states = {t["name"]: t["state"] for t in view["targets"]}
        assert states == {"gateway east-1": "up", "gateway west-1": "up", "gateway east-2": "unreachable",
                          "control east-1": "up"}  # fmt: skip
        assert any("gateway east-2" in w["message"] and "unreachable since" in w["message"] for w in view["warnings"])
        links = {(k["source"], k["destination"]): k for k in view["links"]}
        assert links[("east-1", "west-1")]["state"] == "up" and links[("east-1", "west-1")]["rps"] > 0
        assert links[("east-1", "east-2")]["state"] == "down"
        async with httpx.AsyncClient() as client:
            page = await client.get(f"{live.url}/dashboard/")
        assert page.status_code == 200 and b"Mesh map" in page.content


async def test_losing_a_zone_shows_up_as_a_failover_event(dashboard_pki):
    async with open_live_dashboard(dashboard_pki) as live:
        live.topology.east.apply_catalog(east_local_catalog(live.topology))
        await overview_until(live.url, lambda v: (s := service(v, "echo.demo")) is not None and s["share"]
                             and s["share"][0]["cluster"] == "east-1" and s["share"][0]["fraction"] == 1.0)  # fmt: skip
        live.topology.east.apply_catalog(zone_lost_catalog(live.topology))
        view = await overview_until(live.url, lambda v: any(e["service"] == "echo.demo" for e in v["events"]))
        (event,) = [e for e in view["events"] if e["service"] == "echo.demo"]
        assert event["kind"] == "traffic-moved"
        assert event["from"] == "us-east/us-east-1a (east-1)" and event["to"] == "eu-west/eu-west-1a (west-1)"


async def test_mounted_in_front_of_the_api_it_scrapes_for_the_servers_lifespan(dashboard_pki):
    import trio
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.trio import serve as hypercorn_serve

    from federation.dashboard.app import mount_dashboard
    from tests.conftest import free_port
    from tests.integration.dashboard.support import gateway_targets
    from tests.integration.gateway.support import open_topology

    async def api(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"cluster":"east-1"}'})

    async with open_topology(dashboard_pki) as topology, trio.open_nursery() as nursery:
        app = mount_dashboard(api, lambda: gateway_targets(topology))
        config = HypercornConfig()
        port = free_port("127.0.0.1")
        config.bind = [f"127.0.0.1:{port}"]
        config.accesslog = config.errorlog = None
        await nursery.start(hypercorn_serve, app, config)
        url = f"http://127.0.0.1:{port}"
        view = await overview_until(url, lambda v: [t["state"] for t in v["targets"]] == ["up", "up"])
        assert {c["name"] for r in view["regions"] for c in r["clusters"]} == {"east-1", "west-1"}
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{url}/v1/status")).json() == {"cluster": "east-1"}
        nursery.cancel_scope.cancel()
