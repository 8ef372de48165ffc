"""A linked peer that lies over the real import stream: refused item by item, counted, logged once;
the local catalog and the honest part of the import are untouched."""

from __future__ import annotations

import logging

import trio

from certs.testing import make_pki
from federation.catalog_stream import ExportHub
from federation.control import issue_peering_token
from registry import codec
from registry.model import Endpoint, Export, Locality, Service
from registry.store import Store
from registry.testing import FakeBackend
from tests.integration.federation.test_two_control_planes import (
    CLUSTERS,
    Running,
    cluster_config,
    endpoints_of,
    scrape,
    wait_for,
)

EAST = Locality("us-east", "us-east-1a")
WEST = Locality("eu-west", "eu-west-1a")


async def test_a_lying_peer_is_refused_and_counted(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.WARNING, logger="isthmus.federation.sync")
    make_pki(tmp_path / "pki", clusters=CLUSTERS)
    east_cfg, west_cfg = cluster_config(tmp_path, "east-1", tmp_path / "pki"), cluster_config(tmp_path, "west-1", tmp_path / "pki")
    async with trio.open_nursery() as nursery:
        east, west = Running(nursery, east_cfg, FakeBackend()), Running(nursery, west_cfg, FakeBackend())
        await east.start()
        await west.start()
        west_store = Store(west.backend)
        mine = Endpoint("echo.demo", "west-1", "127.0.2.10", 8080, WEST)
        await west_store.register_endpoints(Service.from_key("echo.demo"), [mine])
        east_store = Store(east.backend)
        await east_store.register_endpoints(Service.from_key("echo.demo"), [Endpoint("echo.demo", "east-1", "127.0.1.10", 8080, EAST)])
        await east_store.set_export("east-1", Export("echo.demo", ("*",)))

        honest_watch = ExportHub.watch_exports

        async def lying_watch(hub, peer, from_revision, **kwargs):
            async for message in honest_watch(hub, peer, 0, **kwargs):  # always a snapshot
                if hub.cluster == "east-1" and message["type"] == "snapshot":
                    message["services"].append(codec.service_to_dict(Service.from_key("secret.demo")))
                    message["endpoints"] += [
                        codec.endpoint_to_dict(Endpoint("echo.demo", "west-1", "127.0.2.10", 8080, WEST, weight=1000)),
                        codec.endpoint_to_dict(Endpoint("echo.demo", "east-2", "127.0.2.66", 8080, Locality("us-east", "us-east-1c"))),
                        codec.endpoint_to_dict(Endpoint("secret.demo", "east-1", "127.0.1.66", 8080, EAST)),
                    ]
                yield message

        monkeypatch.setattr(ExportHub, "watch_exports", lying_watch)
        token, _ = issue_peering_token(east_cfg, "west-1", 900)
        await west.plane.register_with_token(token)
        await wait_for(lambda: endpoints_of(west.plane, "echo.demo", "east-1"), "honest import")

        status = west.plane.peer_status("east-1")
        assert status["refused"] == {"foreign-cluster": 2, "not-exported": 2}
        assert status["imported_endpoints"] == 1
        metrics = await scrape(west_cfg)
        assert metrics['isthmus_federation_refused_total{peer="east-1",reason="foreign-cluster"}'] == 2.0
        assert west.plane.catalogs.current.endpoints[mine.id] == mine  # the local endpoint untouched (weight 1)
        assert not endpoints_of(west.plane, "echo.demo", "east-2")
        assert not endpoints_of(west.plane, "secret.demo", "east-1")

        # Reconnects bring the same lies again: counted again, but each is logged once.
        east.stop()
        await east.start()
        await wait_for(lambda: west.plane.peer_status("east-1")["refused"].get("foreign-cluster", 0) >= 4, "second round", 20)
        lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert len(lines) == len(set(lines)) == 4
        assert any("endpoint west-1/127.0.2.10:8080: foreign-cluster: belongs to cluster west-1, not east-1" in line for line in lines)
        nursery.cancel_scope.cancel()
