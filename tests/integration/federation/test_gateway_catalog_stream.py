"""A gateway's catalog source fed by its control plane: snapshot, deltas, last-known-good, cache."""

from __future__ import annotations

from contextlib import aclosing

import trio

from certs.testing import make_pki
from federation.control import ControlPlane
from gateway.control_source import ControlPlaneCatalogSource
from registry.model import Endpoint, Locality, Service
from registry.store import Store
from registry.testing import FakeBackend
from tests.integration.federation.test_two_control_planes import cluster_config

LOC = Locality("us-east", "us-east-1a")


async def test_the_gateway_follows_its_control_plane_and_keeps_the_last_catalog(tmp_path):
    pki = make_pki(tmp_path / "pki", clusters={"east-1": ("us-east", "us-east-1a")})
    config = cluster_config(tmp_path, "east-1", pki.dir)
    backend = FakeBackend()
    store = Store(backend)
    echo = Service.from_key("echo.demo")
    cache = tmp_path / "gateway" / "catalog.json"
    async with trio.open_nursery() as nursery:

        async def run_plane(task_status=trio.TASK_STATUS_IGNORED):
            with trio.CancelScope() as scope:
                task_status.started(scope)
                await ControlPlane(config, backend, heartbeat_s=0.2).serve()

        plane_scope = await nursery.start(run_plane)
        await store.add_cluster(config.cluster)
        await store.register_endpoints(echo, [Endpoint("echo.demo", "east-1", "127.0.1.10", 8080, LOC)])
        source = ControlPlaneCatalogSource(config.control_api, cache_file=cache, idle_timeout_s=1.0)
        async with aclosing(source.__aiter__()) as catalogs:
            with trio.fail_after(15):
                first = await catalogs.__anext__()
                while not first.endpoints:  # the control plane may not have seen the registration yet
                    first = await catalogs.__anext__()
                assert sorted(e.address for e in first.endpoints.values()) == ["127.0.1.10"]
                await store.register_endpoints(echo, [Endpoint("echo.demo", "east-1", "127.0.1.11", 8080, LOC)], replace=False)
                second = await catalogs.__anext__()  # a delta on the same stream
            assert sorted(e.address for e in second.endpoints.values()) == ["127.0.1.10", "127.0.1.11"]
            assert second.revision == first.revision + 1
            assert cache.exists()

            # The control plane goes away: the source yields nothing new and reports staleness.
            plane_scope.cancel()
            with trio.move_on_after(1.5):
                catalog = await catalogs.__anext__()
                raise AssertionError(f"a catalog arrived while the control plane was down: {catalog}")
            assert source.stale_since is not None and source.last_error

        # A gateway restarted meanwhile starts from its cache (static stability).
        async with aclosing(ControlPlaneCatalogSource(config.control_api, cache_file=cache).__aiter__()) as catalogs:
            cached = await catalogs.__anext__()
        assert cached == second
        nursery.cancel_scope.cancel()
