"""The typed store over the fake backend: registration rules, catalogs, watches and heartbeats."""

from __future__ import annotations

from contextlib import aclosing

import pytest
import trio

from registry.errors import DuplicateEndpoint, UnknownCluster, ValidationError
from registry.model import Cluster, Endpoint, Export, Locality, Peer, Service
from registry.store import Store, endpoint_key, parse_key
from registry.testing import FakeBackend

EAST = Cluster("east-1", "us-east", ("us-east-1a", "us-east-1b"))
ZONE_A = Locality("us-east", "us-east-1a")
ECHO = Service("echo", "demo", ports=(8080,))


def ep(port, zone=ZONE_A, cluster="east-1", service="echo.demo"):
    return Endpoint(service, cluster, "127.0.1.10", port, zone)


@pytest.fixture
async def store():
    s = Store(FakeBackend())
    await s.add_cluster(EAST)
    return s


async def test_registration_is_one_transaction_and_shows_in_the_catalog(store):
    before = (await store.backend.status()).revision
    reg = await store.register_endpoints(ECHO, [ep(8080), ep(8081)])
    assert reg.revision == before + 1 and reg.lease == 0
    catalog = await store.load_catalog("east-1")
    assert catalog.revision == reg.revision
    assert catalog.services == {"echo.demo": ECHO}
    assert sorted(e.port for e in catalog.endpoints.values()) == [8080, 8081]


async def test_unknown_cluster_is_refused_and_nothing_written(store):
    with pytest.raises(UnknownCluster, match="cluster 'west-1' is not known to the registry .known: east-1"):
        await store.register_endpoints(ECHO, [ep(8080, cluster="west-1")])
    assert (await store.backend.get_prefix("/isthmus/west-1/"))[1] == []


async def test_duplicate_endpoint_ids_are_refused(store):
    await store.register_endpoints(ECHO, [ep(8080)])
    with pytest.raises(DuplicateEndpoint, match="endpoint.id: 'east-1/127.0.1.10:8080' is already registered"):
        await store.register_endpoints(ECHO, [ep(8081), ep(8080)])
    with pytest.raises(DuplicateEndpoint, match="given twice"):
        await store.register_endpoints(ECHO, [ep(9000), ep(9000)])
    other = Service("other", "demo")
    with pytest.raises(DuplicateEndpoint, match="already registered in cluster east-1"):
        await store.register_endpoints(other, [ep(8080, service="other.demo")])
    catalog = await store.load_catalog("east-1")
    assert [e.port for e in catalog.endpoints.values()] == [8080]


async def test_locality_outside_the_cluster_is_refused(store):
    with pytest.raises(ValidationError, match="endpoint.locality: us-east/us-east-1c is not a locality of cluster east-1"):
        await store.register_endpoints(ECHO, [ep(8080, zone=Locality("us-east", "us-east-1c"))])


async def test_reserved_cluster_name():
    with pytest.raises(ValidationError, match="'clusters' is reserved"):
        await Store(FakeBackend()).add_cluster(Cluster("clusters", "us-east", ("a",)))


async def test_deregister_endpoint_then_service(store):
    await store.register_endpoints(ECHO, [ep(8080), ep(8081)])
    await store.set_export("east-1", Export("echo.demo", ["*"]))
    await store.deregister("east-1", "echo.demo", "east-1/127.0.1.10:8080")
    assert [e.port for e in (await store.load_catalog("east-1")).endpoints.values()] == [8081]
    with pytest.raises(ValidationError, match="'east-1/127.0.1.10:8080' is not registered for echo.demo"):
        await store.deregister("east-1", "echo.demo", "east-1/127.0.1.10:8080")
    await store.deregister("east-1", "echo.demo")
    catalog = await store.load_catalog("east-1")
    assert (catalog.services, catalog.endpoints, catalog.exports) == ({}, {}, {})


async def test_exports_and_peers(store):
    await store.set_export("east-1", Export("echo.demo", ["west-1"]))
    await store.put_peer("east-1", Peer("west-1", "eu-west", ("eu-west-1a",), "127.0.3.1:15443"))
    catalog = await store.load_catalog("east-1")
    assert catalog.exports["echo.demo"].allows("west-1")
    assert catalog.peers["west-1"].gateway == "127.0.3.1:15443"
    with pytest.raises(ValidationError, match="is this cluster itself"):
        await store.put_peer("east-1", Peer("east-1", "us-east", ("a",), "127.0.0.1:1"))


async def test_watch_catalog_yields_each_change(store):
    await store.register_endpoints(ECHO, [ep(8080)])
    seen = []
    async with aclosing(store.watch_catalog("east-1")) as catalogs:
        async for catalog in catalogs:
            seen.append(catalog)
            if len(seen) == 1:
                await store.register_endpoints(ECHO, [ep(8081)])
            elif len(seen) == 2:
                await store.deregister("east-1", "echo.demo", "east-1/127.0.1.10:8080")
            else:
                break
    assert [sorted(e.port for e in c.endpoints.values()) for c in seen] == [[8080], [8080, 8081], [8081]]
    assert seen[0].revision < seen[1].revision < seen[2].revision
    assert len(seen[0].endpoints) == 1  # earlier snapshots are not changed by later updates


async def test_watch_resumes_from_a_base_catalog(store):
    await store.register_endpoints(ECHO, [ep(8080)])
    base = await store.load_catalog("east-1")
    await store.register_endpoints(ECHO, [ep(8081)])
    async with aclosing(store.watch_catalog("east-1", base=base)) as catalogs:
        async for catalog in catalogs:
            assert sorted(e.port for e in catalog.endpoints.values()) == [8080, 8081]
            break


async def test_a_bad_stored_value_is_skipped(store):
    from registry.backend import Put

    await store.register_endpoints(ECHO, [ep(8080)])
    await store.backend.txn([Put(endpoint_key("east-1", "echo.demo", "junk"), b"{not json")])
    catalog = await store.load_catalog("east-1")
    assert list(catalog.endpoints) == ["east-1/127.0.1.10:8080"]


async def test_ttl_endpoints_vanish_without_heartbeat(store, autojump_clock):
    reg = await store.register_endpoints(ECHO, [ep(8080)], ttl_s=30)
    assert reg.lease
    await trio.sleep(29)
    assert len((await store.load_catalog("east-1")).endpoints) == 1
    await trio.sleep(2)
    assert len((await store.load_catalog("east-1")).endpoints) == 0
    assert (await store.load_catalog("east-1")).services == {"echo.demo": ECHO}


async def test_heartbeat_keeps_endpoints_and_removes_them_on_exit(store, autojump_clock):
    async with trio.open_nursery() as nursery:
        reg = await nursery.start(store.serve_heartbeat, ECHO, [ep(8080)], 10.0)
        assert reg.lease
        await trio.sleep(120)
        assert len((await store.load_catalog("east-1")).endpoints) == 1
        nursery.cancel_scope.cancel()
    assert len((await store.load_catalog("east-1")).endpoints) == 0


async def test_heartbeat_registers_again_after_losing_its_lease(store, autojump_clock):
    async with trio.open_nursery() as nursery:
        reg = await nursery.start(store.serve_heartbeat, ECHO, [ep(8080)], 10.0)
        await store.backend.revoke(reg.lease)  # as if the backend forgot it
        assert len((await store.load_catalog("east-1")).endpoints) == 0
        await trio.sleep(5)
        assert len((await store.load_catalog("east-1")).endpoints) == 1
        nursery.cancel_scope.cancel()


def test_parse_key():
    assert parse_key("/isthmus/east-1/endpoints/echo.demo/east-1/127.0.0.1:80") == ("east-1", "endpoints", "east-1/127.0.0.1:80")
    assert parse_key("/isthmus/east-1/services/echo.demo") == ("east-1", "services", "echo.demo")
    assert parse_key("/isthmus/clusters/east-1") is None
    assert parse_key("/elsewhere/x") is None


async def test_watch_from_a_compacted_base_resumes_with_a_snapshot(store):
    await store.register_endpoints(ECHO, [ep(8080)])
    base = await store.load_catalog("east-1")
    await store.register_endpoints(ECHO, [ep(8081)])
    await store.deregister("east-1", "echo.demo", "east-1/127.0.1.10:8080")
    await store.backend.compact((await store.backend.status()).revision)
    async with aclosing(store.watch_catalog("east-1", base=base)) as catalogs:
        async for catalog in catalogs:
            assert [e.port for e in catalog.endpoints.values()] == [8081]
            break


async def test_the_transaction_itself_refuses_a_duplicate(store):
    # Without the read-ahead (bulk loaders), the txn's compare still refuses the id, and a lease is not leaked.
    await store.register_endpoints(ECHO, [ep(8080)], check_cluster_ids=False)
    with pytest.raises(DuplicateEndpoint, match="'east-1/127.0.1.10:8080' is already registered for echo.demo"):
        await store.register_endpoints(ECHO, [ep(8081), ep(8080)], check_cluster_ids=False, ttl_s=30)
    assert store.backend._leases == {}
    assert [e.port for e in (await store.load_catalog("east-1")).endpoints.values()] == [8080]
