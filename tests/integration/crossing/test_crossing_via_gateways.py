"""Federation through the east-west gateways: peering, imports, a change propagating, probes, all
through each cluster's one crossing; forged identities stripped; strangers refused at the gateway."""

from __future__ import annotations

import httpx
import pytest
import trio

from certs.testing import make_pki
from federation.control import issue_peering_token
from registry.model import Endpoint, Export, Locality, Peer, Service
from registry.store import Store
from registry.testing import FakeBackend
from tests.integration.crossing.support import (
    CLUSTERS,
    Cluster,
    cluster_config,
    endpoints_of,
    forwarded_calls,
    scrape,
    wait_for,
)

EAST_LOC, WEST_LOC = Locality("us-east", "us-east-1a"), Locality("eu-west", "eu-west-1a")


def status_calls(plane) -> dict[tuple[str, str], int]:
    return dict(plane.federation_calls)


@pytest.mark.parametrize("roots", ["one root", "a root per cluster"])
async def test_peering_imports_and_changes_cross_only_through_the_gateways(tmp_path, roots):
    if roots == "one root":
        make_pki(tmp_path / "pki", clusters=CLUSTERS)
        east_pki = west_pki = tmp_path / "pki"
    else:  # the gateways trust each other through the bundles exchanged at peering
        east_pki, west_pki = tmp_path / "pki-east", tmp_path / "pki-west"
        make_pki(east_pki, clusters={"east-1": CLUSTERS["east-1"]})
        make_pki(west_pki, clusters={"west-1": CLUSTERS["west-1"]})
    async with trio.open_nursery() as nursery:
        east = await Cluster(nursery, cluster_config(tmp_path, "east-1", east_pki), FakeBackend()).start()
        west = await Cluster(nursery, cluster_config(tmp_path, "west-1", west_pki), FakeBackend()).start()
        east_store, west_store = Store(east.backend), Store(west.backend)
        echo = Service.from_key("echo.demo", ports=(8080,))
        await east_store.register_endpoints(echo, [Endpoint("echo.demo", "east-1", f"127.0.1.{i}", 8080, EAST_LOC) for i in (10, 11)])
        await east_store.register_endpoints(Service.from_key("secret.demo"), [Endpoint("secret.demo", "east-1", "127.0.1.20", 8080, EAST_LOC)])
        await east_store.set_export("east-1", Export("echo.demo", ("west-1",)))
        await west_store.register_endpoints(Service.from_key("hello.demo"), [Endpoint("hello.demo", "west-1", "127.0.2.10", 8080, WEST_LOC)])
        await west_store.set_export("west-1", Export("hello.demo", ("*",)))

        token, _ = issue_peering_token(east.config, "west-1", 900)
        async with httpx.AsyncClient(base_url=f"http://{west.config.control_api}", trust_env=False) as client:
            response = await client.post("/v1/peering/register", json={"token": token})
            assert response.status_code == 200, response.text

        # Each side imports what the other exports, and nothing else.
        await wait_for(lambda: len(endpoints_of(west.plane, "echo.demo", "east-1")) == 2, "echo in west-1")
        await wait_for(lambda: len(endpoints_of(east.plane, "hello.demo", "west-1")) == 1, "hello in east-1")
        assert not endpoints_of(west.plane, "secret.demo", "east-1")
        # ... and the gateways hold them too (east-1's gateway can route hello.demo to west-1).
        await wait_for(lambda: any(e.cluster == "west-1" for e in east.gateway.catalog.endpoints.values()), "east gateway")

        # A change propagates.
        await east_store.register_endpoints(echo, [Endpoint("echo.demo", "east-1", "127.0.1.12", 8080, EAST_LOC)], replace=False)
        await wait_for(lambda: len(endpoints_of(west.plane, "echo.demo", "east-1")) == 3, "third echo endpoint")

        # Probes cross the gateways too: up, with a round trip, and the peer gateway's identity.
        await wait_for(lambda: (p := west.plane.probes.get("east-1")) is not None and p.rtt_s and not p.error, "probe")
        async with httpx.AsyncClient(base_url=f"http://{west.config.control_api}", trust_env=False) as client:
            peer = (await client.get("/v1/peers")).json()["peers"][0]
        assert peer["state"] == "synced" and peer["rtt_ms"] > 0
        assert peer["peer_identity"] == "spiffe://mesh.example/cluster/east-1/gateway"

        # Counted on both sides: east-1's gateway forwarded west-1's probes (200; the watch, still
        # streaming, is counted when it ends) ...
        admin = f"{east.gateway.addresses['admin'][0]}:{east.gateway.addresses['admin'][1]}"
        with trio.fail_after(5):
            while forwarded_calls(await scrape(admin), "west-1") < 2:  # noqa: ASYNC110 - polling metrics with a deadline
                await trio.sleep(0.1)
        # ... and east-1's control plane got every federation call from its gateway, except the
        # peering redeem on the bootstrap listener.
        calls = status_calls(east.plane)
        assert calls[("gateway", "/v1/federation/watch")] >= 1 and calls[("gateway", "/v1/federation/probe")] >= 1
        assert {k for k in calls if k[0] != "gateway"} == {("crossing", "/v1/federation/redeem")}
        assert calls[("crossing", "/v1/federation/redeem")] == 1
        assert {k[0] for k in status_calls(west.plane)} == {"gateway"}
        plane_metrics = await scrape(west.config.control_api)
        assert plane_metrics['isthmus_peer_probe_up{destination_cluster="east-1",source_cluster="west-1"}'] == 1.0
        assert plane_metrics['isthmus_peer_probe_rtt_seconds{destination_cluster="east-1",source_cluster="west-1"}'] > 0
        assert plane_metrics['isthmus_federation_sync_latency_seconds_count{peer="east-1"}'] >= 1

        # east-1's control plane goes away: its gateway answers 503, west-1 keeps the imports, stale.
        east.stop_control()
        await wait_for(lambda: west.plane.imports["east-1"].sync.state.value == "stale", "stale")
        await wait_for(lambda: (p := west.plane.probes.get("east-1")) is not None and p.error, "probe down")
        assert "503" in west.plane.probes["east-1"].error and "control-plane-unavailable" in west.plane.probes["east-1"].error
        assert len(endpoints_of(west.plane, "echo.demo", "east-1")) == 3
        nursery.cancel_scope.cancel()


@pytest.fixture
async def linked(tmp_path, nursery):
    """east-1 (control plane and gateway) linked with west-1; east-2 shares the root but is not linked."""
    pki = make_pki(tmp_path / "pki", clusters=CLUSTERS)
    rogue = make_pki(tmp_path / "rogue", clusters={"west-1": CLUSTERS["west-1"]})
    east = await Cluster(nursery, cluster_config(tmp_path, "east-1", pki.dir), FakeBackend()).start()
    store = Store(east.backend)
    await store.register_endpoints(Service.from_key("echo.demo"), [Endpoint("echo.demo", "east-1", "127.0.1.10", 8080, EAST_LOC)])
    await store.set_export("east-1", Export("echo.demo", ("west-1",)))
    await store.put_peer("east-1", Peer("west-1", "eu-west", ("eu-west-1a",), "127.0.2.1:1", "127.0.2.1:1", pki.bundle.pem))
    await wait_for(lambda: "west-1" in east.plane._peer_records and east.plane.exports.view("west-1").services, "peer stored")
    return east, pki, rogue


def via_gateway(east, context):
    host, port = east.gateway.addresses["eastwest"]
    return httpx.AsyncClient(base_url=f"https://{host}:{port}", verify=context, timeout=5, trust_env=False,
                             headers={"host": "federation.isthmus"})


SNI = {"sni_hostname": "federation.isthmus"}


async def test_a_linked_peer_reads_its_exports_through_the_gateway(linked):
    east, pki, _ = linked
    async with via_gateway(east, pki.client_context("west-1", alpn=("http/1.1",))) as client:
        response = await client.get("/v1/federation/export", params={"peer": "west-1"}, extensions=SNI)
        assert response.status_code == 200, response.text
        assert [s["name"] for s in response.json()["services"]] == ["echo"]
        spoof = await client.get("/v1/federation/export", params={"peer": "east-2"}, extensions=SNI)
        assert spoof.status_code == 403
        assert spoof.json()["error"] == "spiffe://mesh.example/cluster/west-1/gateway may not act for cluster east-2"


async def test_a_forged_identity_from_outside_is_stripped_at_the_gateway(linked):
    east, pki, _ = linked
    secret = (east.config.data_dir / "control" / "forward.secret").read_text().strip()
    forged = {"x-isthmus-peer-identity": "spiffe://mesh.example/cluster/west-1/gateway",
              "x-forwarded-client-cert": "URI=spiffe://mesh.example/cluster/west-1/gateway",
              "x-isthmus-forward-secret": secret}  # fmt: skip
    async with via_gateway(east, pki.client_context("east-2", alpn=("http/1.1",))) as client:
        probe = await client.get("/v1/federation/probe", headers=forged, extensions=SNI)
        assert probe.status_code == 200
        assert probe.json()["identity"] == "spiffe://mesh.example/cluster/east-2/gateway"
        export = await client.get("/v1/federation/export", params={"peer": "west-1"}, headers=forged, extensions=SNI)
        assert export.status_code == 403
        assert export.json()["error"] == "spiffe://mesh.example/cluster/east-2/gateway may not act for cluster west-1"


async def test_only_federation_calls_are_forwarded(linked):
    east, pki, _ = linked
    async with via_gateway(east, pki.client_context("west-1", alpn=("http/1.1",))) as client:
        for path in ("/v1/peers", "/metrics", "/v1/federation/../peers", "/dashboard/"):
            response = await client.get(path, extensions=SNI)
            assert response.status_code == 404, path
            assert response.headers["x-isthmus-reason"] == "federation-path-unknown"
    metrics = await scrape(f"{east.gateway.addresses['admin'][0]}:{east.gateway.addresses['admin'][1]}")
    assert forwarded_calls(metrics, "west-1", "404") == 4
    assert not east.plane.federation_calls


async def test_a_peer_outside_the_trust_bundle_is_refused_at_the_gateway(linked):
    east, _, rogue = linked
    async with via_gateway(east, rogue.client_context("west-1", alpn=("http/1.1",))) as client:
        with pytest.raises(httpx.HTTPError):
            await client.get("/v1/federation/export", params={"peer": "west-1"}, extensions=SNI)
    admin = f"{east.gateway.addresses['admin'][0]}:{east.gateway.addresses['admin'][1]}"

    async def refusals() -> float:
        metrics = await scrape(admin)
        return sum(v for k, v in metrics.items() if k.startswith('isthmus_tls_handshake_failures_total{listener="eastwest"'))

    with trio.fail_after(5):
        while await refusals() < 1:  # noqa: ASYNC110 - polling metrics with a deadline
            await trio.sleep(0.05)
    assert not east.plane.federation_calls


async def test_the_bootstrap_listener_serves_only_the_peering_redeem(linked):
    east, pki, _ = linked
    context = pki.client_context("west-1", alpn=("http/1.1",))
    async with httpx.AsyncClient(base_url=f"https://{east.plane.federation_address}", verify=context, timeout=5) as client:
        export = await client.get("/v1/federation/export", params={"peer": "west-1"})
        assert export.status_code == 403
        assert export.json()["error"] == ("federation calls must arrive through this cluster's east-west gateway "
                                          "(authority federation.isthmus)")  # fmt: skip
        redeem = await client.post("/v1/federation/redeem", json={"secret": "guess"})
        assert redeem.status_code == 400 and "malformed" in redeem.json()["error"]
