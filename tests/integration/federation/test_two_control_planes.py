"""Two clusters on loopback (east-1 on sqlite, west-1 on the in-memory backend or a real etcd), each a
control plane and its east-west gateway, peer with a token, import each other's exported services
through the gateways, ride out a partition and resume without loss."""

from __future__ import annotations

import contextlib
import shutil

import httpx
import pytest
import trio

from certs.testing import make_pki
from federation.control import issue_peering_token
from federation.imports import check_consistency, export_view
from registry.model import Endpoint, Export, Locality, Service
from registry.store import Store
from registry.testing import FakeBackend
from registry.url import open_backend
from tests.integration.crossing.support import Cluster, cluster_config, endpoints_of, wait_for
from tests.integration.crossing.support import scrape as scrape_page

CLUSTERS = {"east-1": ("us-east", "us-east-1a"), "west-1": ("eu-west", "eu-west-1a")}
FAST = dict(heartbeat_s=0.3, idle_timeout_s=2.0, probe_interval_s=0.5)


async def scrape(config):
    """The control plane's /metrics as {'name{labels}': value}."""
    return await scrape_page(config.control_api)


class Running(Cluster):
    """A control plane in its own cancel scope, so a test can stop it (a partition) and start it
    again; the cluster's gateway (federation's one crossing) starts with it once and stays up."""

    def __init__(self, nursery, config, backend):
        super().__init__(nursery, config, backend, **FAST)

    async def start(self, backend=None):
        plane = await self.start_control(backend)
        if self.gateway is None:
            await self.start_gateway()
        return plane

    def stop(self):
        self.stop_control()


@contextlib.asynccontextmanager
async def west_backend(kind, tmp_path):
    if kind == "memory":
        yield FakeBackend()
        return
    from registry.etcd_process import open_etcd

    async with open_etcd(tmp_path / "etcd", host="127.0.2.1") as etcd, open_backend(etcd.registry_url) as backend:
        yield backend


@pytest.mark.slow
@pytest.mark.parametrize(
    ("roots", "west_kind"),
    [
        ("one root", "memory"),
        ("a root per cluster", "memory"),
        pytest.param("one root", "etcd", marks=[pytest.mark.etcd, pytest.mark.skipif(not shutil.which("etcd"), reason="no etcd")]),
    ],
)
async def test_peering_import_partition_and_resume(tmp_path, roots, west_kind):
    if roots == "one root":
        make_pki(tmp_path / "pki", clusters=CLUSTERS)
        east_pki = west_pki = tmp_path / "pki"
    else:  # the clusters trust each other only through the bundles exchanged at peering
        east_pki, west_pki = tmp_path / "pki-east", tmp_path / "pki-west"
        make_pki(east_pki, clusters={"east-1": CLUSTERS["east-1"]})
        make_pki(west_pki, clusters={"west-1": CLUSTERS["west-1"]})
    east_cfg, west_cfg = cluster_config(tmp_path, "east-1", east_pki), cluster_config(tmp_path, "west-1", west_pki)
    east_loc, west_loc = Locality("us-east", "us-east-1a"), Locality("eu-west", "eu-west-1a")
    echo = Service.from_key("echo.demo", ports=(8080,))
    hello = Service.from_key("hello.demo", ports=(8080,))

    async with open_backend(east_cfg.registry_url) as east_db, west_backend(west_kind, tmp_path) as west_db, \
            trio.open_nursery() as nursery:  # fmt: skip
        east, west = Running(nursery, east_cfg, east_db), Running(nursery, west_cfg, west_db)
        await east.start()
        await west.start()
        east_store, west_store = Store(east_db), Store(west_db)
        await east_store.register_endpoints(echo, [Endpoint("echo.demo", "east-1", f"127.0.1.{i}", 8080, east_loc) for i in (10, 11)])
        await east_store.register_endpoints(Service.from_key("secret.demo"), [Endpoint("secret.demo", "east-1", "127.0.1.20", 8080, east_loc)])
        await east_store.set_export("east-1", Export("echo.demo", ("west-1",)))
        await west_store.register_endpoints(hello, [Endpoint("hello.demo", "west-1", "127.0.2.10", 8080, west_loc)])
        await west_store.set_export("west-1", Export("hello.demo", ("*",)))

        # Peering: east-1 issues a token for west-1; west-1 redeems it through its API.
        token, _ = issue_peering_token(east_cfg, "west-1", 900)
        async with httpx.AsyncClient(base_url=f"http://{west_cfg.control_api}") as client:
            response = await client.post("/v1/peering/register", json={"token": token})
            assert response.status_code == 200, response.text
            assert response.json()["peer"] == "east-1"
            assert len(response.json()["root_fingerprints"]) == 1
            replay = await client.post("/v1/peering/register", json={"token": token})
            assert replay.status_code == 400
            assert "already a peer" in replay.json()["error"]

        # Exported services appear on the other side with their origin cluster and locality.
        await wait_for(lambda: len(endpoints_of(west.plane, "echo.demo", "east-1")) == 2, "echo in west-1")
        await wait_for(lambda: len(endpoints_of(east.plane, "hello.demo", "west-1")) == 1, "hello in east-1")
        assert {e.locality for e in endpoints_of(west.plane, "echo.demo", "east-1").values()} == {east_loc}
        assert not endpoints_of(west.plane, "secret.demo", "east-1")  # not exported
        await wait_for(lambda: west.plane.probes.get("east-1") and west.plane.probes["east-1"].rtt_s, "probe")
        async with httpx.AsyncClient(base_url=f"http://{west_cfg.control_api}") as client:
            peers = (await client.get("/v1/peers")).json()["peers"]
        assert peers[0]["name"] == "east-1" and peers[0]["state"] == "synced"
        assert peers[0]["imported_endpoints"] == 2 and peers[0]["rtt_ms"] > 0

        # A change propagates, and its latency is measured.
        await east_store.register_endpoints(echo, [Endpoint("echo.demo", "east-1", "127.0.1.12", 8080, east_loc)], replace=False)
        await wait_for(lambda: len(endpoints_of(west.plane, "echo.demo", "east-1")) == 3, "third echo endpoint")
        metrics = await scrape(west_cfg)
        assert metrics['isthmus_peer_probe_up{destination_cluster="east-1",source_cluster="west-1"}'] == 1.0
        assert metrics['isthmus_federation_sync_latency_seconds_count{peer="east-1"}'] >= 1
        assert metrics['isthmus_cluster_info{cluster="east-1",region="us-east",zones="us-east-1a"}'] == 1.0

        # Partition: east-1's control plane stops. west-1 keeps the imports, marked stale.
        east.stop()
        await wait_for(lambda: west.plane.imports["east-1"].sync.state.value == "stale", "stale")
        await trio.sleep(1.0)
        status = west.plane.peer_status("east-1")
        assert status["stale_s"] >= 0.9 and status["imported_endpoints"] == 3
        metrics = await scrape(west_cfg)
        assert metrics['isthmus_catalog_stale_seconds{cluster="east-1"}'] >= 0.9
        assert metrics['isthmus_peer_probe_up{destination_cluster="east-1",source_cluster="west-1"}'] == 0.0
        assert len(endpoints_of(west.plane, "echo.demo", "east-1")) == 3

        # While it is away, east-1's registry changes; then it comes back.
        await east_store.deregister("east-1", "echo.demo", "east-1/127.0.1.10:8080")
        await east_store.register_endpoints(echo, [Endpoint("echo.demo", "east-1", "127.0.1.13", 8080, east_loc)], replace=False)
        await east.start()
        truth = export_view(await east_store.load_catalog("east-1"), "west-1")
        await wait_for(lambda: west.plane.imports["east-1"].sync.revision == truth.revision, "resume", within_s=20)
        held = endpoints_of(west.plane, "echo.demo", "east-1").values()
        report = check_consistency(held, truth.endpoints.values())
        assert report.ok, report
        assert west.plane.peer_status("east-1")["stale_s"] is None
        assert west.plane.imports["east-1"].resyncs  # east-1 restarted: a snapshot replaced the view
        nursery.cancel_scope.cancel()


async def test_a_restarted_control_plane_serves_saved_imports_while_the_peer_is_down(tmp_path):
    make_pki(tmp_path / "pki", clusters=CLUSTERS)
    east_cfg, west_cfg = cluster_config(tmp_path, "east-1", tmp_path / "pki"), cluster_config(tmp_path, "west-1", tmp_path / "pki")
    east_loc = Locality("us-east", "us-east-1a")
    async with trio.open_nursery() as nursery:
        east, west = Running(nursery, east_cfg, FakeBackend()), Running(nursery, west_cfg, FakeBackend())
        await east.start()
        await west.start()
        east_store = Store(east.backend)
        await east_store.register_endpoints(Service.from_key("echo.demo"), [Endpoint("echo.demo", "east-1", "127.0.1.10", 8080, east_loc)])
        await east_store.set_export("east-1", Export("echo.demo", ("*",)))
        token, _ = issue_peering_token(east_cfg, "west-1", 900)
        await west.plane.register_with_token(token)
        await wait_for(lambda: len(endpoints_of(west.plane, "echo.demo", "east-1")) == 1, "import")
        saved = west_cfg.data_dir / "imports" / "east-1.json"
        await wait_for(saved.exists, "imports saved")

        east.stop()
        west.stop()
        await west.start()  # east-1 is still down
        assert west.plane.imports["east-1"].sync.state.value == "stale"
        assert len(endpoints_of(west.plane, "echo.demo", "east-1")) == 1
        await east.start()
        await wait_for(lambda: west.plane.imports["east-1"].sync.state.value == "synced", "resumed")
        assert len(endpoints_of(west.plane, "echo.demo", "east-1")) == 1
        nursery.cancel_scope.cancel()
