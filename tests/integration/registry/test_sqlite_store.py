"""The typed store over a real sqlite file: leases expire on the wall clock, watchers see it."""

from __future__ import annotations

from contextlib import aclosing

import trio

from registry.model import Cluster, Endpoint, Locality, Service
from registry.sqlite import open_sqlite_backend
from registry.store import Store

EAST = Cluster("east-1", "us-east", ("us-east-1a",))
ECHO = Service("echo", "demo")


def ep(port):
    return Endpoint("echo.demo", "east-1", "127.0.1.10", port, Locality("us-east", "us-east-1a"))


async def test_ttl_endpoint_disappears_from_a_watched_catalog(tmp_path):
    async with open_sqlite_backend(str(tmp_path / "registry.db")) as backend:
        store = Store(backend)
        await store.add_cluster(EAST)
        await store.register_endpoints(ECHO, [ep(8080)])
        await store.register_endpoints(ECHO, [ep(8081)], ttl_s=1)
        seen = []
        with trio.fail_after(10):
            async with aclosing(store.watch_catalog("east-1")) as catalogs:
                async for catalog in catalogs:
                    seen.append(sorted(e.port for e in catalog.endpoints.values()))
                    if seen[-1] == [8080]:
                        break
        assert seen[0] == [8080, 8081] and seen[-1] == [8080]


async def test_a_second_process_view_of_the_same_file(tmp_path):
    path = str(tmp_path / "registry.db")
    async with open_sqlite_backend(path) as writer_backend, open_sqlite_backend(path) as reader_backend:
        writer, reader = Store(writer_backend), Store(reader_backend)
        await writer.add_cluster(EAST)
        await writer.register_endpoints(ECHO, [ep(8080), ep(8081)])
        catalog = await reader.load_catalog("east-1")
        assert sorted(e.port for e in catalog.endpoints.values()) == [8080, 8081]
        assert catalog.revision == (await writer_backend.status()).revision
