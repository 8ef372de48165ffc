"""Two real clusters (control plane and gateway each) peered on loopback: east-1's dashboard shows
west-1's own summary, fetched through west-1's gateway, with west-1's live numbers for the service
it exports to east-1 and nothing else; a lie from west-1 is refused; when west-1's control plane
stops, east-1's dashboard says since when it does not answer. An unlinked cluster asking for a summary is refused."""

from __future__ import annotations

import logging

import httpx
import trio

from certs.testing import make_pki
from federation.control import issue_peering_token
from registry.model import Endpoint, Export, Locality, Service
from registry.store import Store
from registry.testing import FakeBackend
from tests.integration.crossing.support import CLUSTERS, FAST, HOSTS, Cluster, cluster_config, wait_for
from tests.integration.dashboard.support import overview_until, service
from tests.integration.gateway.support import serve_hypercorn

WEST_LOC = Locality("eu-west", "eu-west-1a")
SNI = {"sni_hostname": "federation.isthmus"}


def west_peer(view):
    return next((p for p in view.get("peers", ()) if p["name"] == "west-1"), None)


def peer_service(view, name):
    peer = west_peer(view)
    summary = peer and peer["summary"]
    return next((s for s in summary["services"] if s["name"] == name), None) if summary else None


async def requests(address: tuple[str, int], host: str, *, period_s: float = 0.02) -> None:
    """An application calling `host` through a gateway's outbound listener until cancelled."""
    async with httpx.AsyncClient(base_url=f"http://{address[0]}:{address[1]}", timeout=5, trust_env=False) as client:
        while True:
            await client.get("/headers", headers={"host": host})
            await trio.sleep(period_s)


async def test_the_dashboard_shows_a_peers_summary_and_its_silence(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="isthmus.federation.control")
    pki = make_pki(tmp_path / "pki", clusters=CLUSTERS)
    options = dict(FAST, summary_interval_s=0.5)
    async with trio.open_nursery() as nursery:
        east = await Cluster(nursery, cluster_config(tmp_path, "east-1", pki.dir), FakeBackend(), **options).start()
        west = await Cluster(nursery, cluster_config(tmp_path, "west-1", pki.dir), FakeBackend(), **options).start()
        port = await serve_hypercorn(nursery, HOSTS["west-1"])  # west-1's application
        store = Store(west.backend)
        for name in ("echo.demo", "secret.demo"):
            await store.register_endpoints(Service.from_key(name, ports=(port,)),
                                           [Endpoint(name, "west-1", HOSTS["west-1"], port, WEST_LOC, id=f"west-1/{name}")])  # fmt: skip
        await store.set_export("west-1", Export("echo.demo", ("east-1",)))  # secret.demo stays in west-1
        token, _ = issue_peering_token(west.config, "east-1", 900)
        await east.plane.register_with_token(token)
        await wait_for(lambda: any(e.cluster == "west-1" for e in east.gateway.catalog.endpoints.values()), "import")

        nursery.start_soon(requests, east.gateway.addresses["outbound"], "echo.demo")  # crosses to west-1
        nursery.start_soon(requests, west.gateway.addresses["outbound"], "secret.demo")  # west-1's own traffic
        east_url, west_url = f"http://{east.config.control_api}", f"http://{west.config.control_api}"
        west_view = await overview_until(west_url, lambda v: all(
            (s := service(v, n)) is not None and s["rps"] > 0 for n in ("echo.demo", "secret.demo")), timeout_s=20)
        view = await overview_until(east_url, lambda v: (s := peer_service(v, "echo.demo")) is not None
                                    and s["rps"] > 0 and s["p99_ms"] is not None, timeout_s=20)  # fmt: skip
        peer = west_peer(view)
        assert peer["state"] == "ok" and peer["current"] and peer["health"] == "ok" and peer["age_s"] < 5
        summary = peer["summary"]
        assert summary["cluster"] == "west-1" and summary["region"] == "eu-west"
        assert [s["name"] for s in summary["services"]] == ["echo.demo"]  # secret.demo is not exported to east-1
        assert summary["gateways"] == [{"name": "gateway west-1", "state": "up", "since": summary["gateways"][0]["since"]}]
        echo = peer_service(view, "echo.demo")
        assert echo["active_locality"] == "eu-west/eu-west-1a (west-1)"
        assert echo["success_rate"] == 1.0
        assert 5 < echo["rps"] < 80  # ~40 req/s sent; west-1's own gateway counted them
        assert 5 < service(west_view, "echo.demo")["rps"] < 80
        assert summary["cert_expiry_s"] > 3600 and summary["catalog_revision"] >= 1

        # A cluster that is not linked with west-1 gets nothing.
        host, eastwest = west.gateway.addresses["eastwest"]
        async with httpx.AsyncClient(base_url=f"https://{host}:{eastwest}", trust_env=False, timeout=5,
                                     verify=pki.client_context("east-2", alpn=("http/1.1",)),
                                     headers={"host": "federation.isthmus"}) as client:  # fmt: skip
            refused = await client.get("/v1/federation/summary", params={"peer": "east-2"}, extensions=SNI)
        assert refused.status_code == 403
        assert refused.json() == {"error": "cluster east-2 is not linked with west-1"}

        # west-1 lies (markup for a name, an absurd rate): refused, shown as such, the last good data kept.
        honest = west.plane.dashboard_summary
        west.plane.dashboard_summary = lambda peer: {**honest(peer), "services": [
            {**echo, "name": "<script>alert(1)</script>", "rps": 1e308}]}  # fmt: skip
        view = await overview_until(east_url, lambda v: west_peer(v)["state"] == "refused")
        assert "services[0].name: '<script>alert(1)</script>' is not a name" in west_peer(view)["error"]
        assert [s["name"] for s in west_peer(view)["summary"]["services"]] == ["echo.demo"]
        del west.plane.dashboard_summary
        await overview_until(east_url, lambda v: west_peer(v)["current"])

        # west-1's control plane stops (its gateway stays): east-1's dashboard says so, keeps the last data greyed.
        west.stop_control()
        caplog.clear()
        view = await overview_until(east_url, lambda v: (p := west_peer(v)) is not None and p["state"] == "no-answer",
                                    timeout_s=10)  # fmt: skip
        peer = west_peer(view)
        assert not peer["current"] and peer["health"] == "silent" and peer["since"] is not None
        assert "503" in peer["error"]
        assert peer["summary"]["services"][0]["name"] == "echo.demo"  # the last good summary, marked not current
        assert any(w["kind"] == "peer-summary" and w["subject"] == "west-1" for w in view["warnings"])
        await overview_until(east_url, lambda v: west_peer(v)["age_s"] > 2)  # several more failed fetches ...
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dashboard: peer west-1")]
        assert len(lines) == 1 and "HTTP 503" in lines[0], lines  # ... logged once
        nursery.cancel_scope.cancel()
