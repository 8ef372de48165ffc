"""Registry URLs, the backoff schedule, and following a catalog through a backend outage."""

from __future__ import annotations

import contextlib
import random

import pytest
import trio

from registry.backoff import Backoff
from registry.errors import RegistryUnavailable, ValidationError
from registry.model import Cluster, Endpoint, Locality, Service
from registry.store import Store
from registry.testing import FakeBackend
from registry.url import RegistryURL, parse_registry_url, serve_followed_catalog


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        ("sqlite:///./isthmus-registry.db", RegistryURL("sqlite", path="./isthmus-registry.db")),
        ("sqlite:///data/registry.db", RegistryURL("sqlite", path="data/registry.db")),
        ("sqlite:////var/lib/isthmus/registry.db", RegistryURL("sqlite", path="/var/lib/isthmus/registry.db")),
        ("etcd://127.0.0.1:2379", RegistryURL("etcd", hosts=("127.0.0.1:2379",))),
        ("etcd://127.0.0.1:2379,127.0.0.2:2379", RegistryURL("etcd", hosts=("127.0.0.1:2379", "127.0.0.2:2379"))),
        ("consul://127.0.0.1:8500", RegistryURL("consul", hosts=("127.0.0.1:8500",))),
    ],
)
def test_good_urls(url, parsed):
    assert parse_registry_url(url) == parsed


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("registry.db", "is not a registry URL"),
        ("mysql://db:3306", "unknown scheme 'mysql'"),
        ("sqlite://relative.db", "a sqlite URL is sqlite:///path"),
        ("etcd://", "name at least one host:port"),
        ("etcd://127.0.0.1", "'127.0.0.1' is not host:port"),
        ("etcd://127.0.0.1:99999", "'127.0.0.1:99999' is not host:port"),
        ("consul://a:1,b:2", "names one agent"),
    ],
)
def test_bad_urls_are_named(url, message):
    with pytest.raises(ValidationError) as info:
        parse_registry_url(url)
    assert message in str(info.value) and repr(url) in str(info.value)


def test_backoff_is_capped_and_jittered():
    backoff = Backoff(base_s=0.1, cap_s=5.0)
    assert [backoff.ceiling(i) for i in range(8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    delays = backoff.schedule(200, random.Random(7))
    assert all(0 <= d <= 5.0 for d in delays)
    assert len(set(delays)) == 200  # jittered: no two gateways retry in lockstep
    assert backoff.schedule(5, random.Random(7)) == backoff.schedule(5, random.Random(7))
    assert backoff.ceiling(10_000) == 5.0


async def test_follower_keeps_last_known_good_catalog_through_an_outage(autojump_clock):
    backend = FakeBackend()
    store = Store(backend)
    await store.add_cluster(Cluster("east-1", "us-east", ("a",)))
    echo = Service("echo", "demo")
    await store.register_endpoints(echo, [Endpoint("echo.demo", "east-1", "127.0.0.1", 80, Locality("us-east", "a"))])
    views = []

    @contextlib.asynccontextmanager
    async def open_store():
        if backend.fail_with is not None:
            raise backend.fail_with
        yield store

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_followed_catalog, open_store, "east-1", views.append)
        assert not views[-1].stale and len(views[-1].catalog.endpoints) == 1
        backend.fail_with = RegistryUnavailable("memory", "connection refused", "start it")
        backend._notify()  # wake the watcher so it notices the outage
        await trio.sleep(30)
        stale = [v for v in views if v.stale]
        assert stale and all(len(v.catalog.endpoints) == 1 for v in stale)
        assert "connection refused" in stale[0].reason
        outage_views = len(stale)
        assert 3 <= outage_views < 60  # retried with backoff, not in a busy loop
        backend.fail_with = None
        await store.register_endpoints(echo, [Endpoint("echo.demo", "east-1", "127.0.0.1", 81, Locality("us-east", "a"))])
        await trio.sleep(15)
        assert not views[-1].stale and len(views[-1].catalog.endpoints) == 2
        nursery.cancel_scope.cancel()
