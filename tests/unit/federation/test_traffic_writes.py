"""`federation.traffic`, the one writer of operators' policies and route rules, on the in-memory
registry: rules for an imported service are accepted, unknown services refused, a refusal or a
removal of nothing writes nothing, and the module stays free of I/O of its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from federation import traffic
from gateway.errors import ConfigInvalid
from registry.errors import ValidationError
from registry.model import Catalog, Endpoint, Locality, Service
from registry.store import Store
from registry.testing import FakeBackend
from tests.unit.federation.test_purity import FORBIDDEN

EAST = Locality("us-east", "us-east-1a")
WEST = Locality("eu-west", "eu-west-1a")
HEADER_RULE = [{"name": "tag", "response_headers": {"add": {"x-route": "tag"}}}]


@pytest.fixture
async def store():
    from registry.model import Cluster

    store = Store(FakeBackend())
    await store.add_cluster(Cluster("east-1", "us-east", ("us-east-1a",)))
    await store.register_endpoints(Service.from_key("echo.demo"), [Endpoint("echo.demo", "east-1", "127.0.1.10", 8080, EAST)])
    return store


def imported_hello() -> Catalog:
    """What east-1's control plane serves: hello.demo imported from west-1 (version=v2 only)."""
    return Catalog("east-1", 7, services={"hello.demo": Service.from_key("hello.demo")},
                   endpoints={"west-1/hello": Endpoint("hello.demo", "west-1", "127.0.3.10", 8080, WEST,
                                                       id="west-1/hello", labels={"version": "v2"})})  # fmt: skip


async def test_rules_for_an_imported_service_are_checked_against_its_imported_endpoints(store):
    v2 = [{"name": "v2", "subset": {"version": "v2"}}]
    with pytest.raises(traffic.UnknownService):  # the registry alone does not know hello.demo
        await traffic.handle(traffic.ROUTES, store, "east-1", "hello.demo", "PUT", {"rules": v2})
    answer = await traffic.handle(traffic.ROUTES, store, "east-1", "hello.demo", "PUT", {"rules": v2}, imported_hello())
    assert answer["rules"] == v2 and answer["stored"]
    v3 = [{"name": "v3", "subset": {"version": "v3"}}]
    with pytest.raises(ConfigInvalid, match='hello.demo route "v3": subset version=v3 matches no endpoint'):
        await traffic.handle(traffic.ROUTES, store, "east-1", "hello.demo", "PUT", {"rules": v3}, imported_hello())


async def test_a_refusal_and_a_removal_of_nothing_move_no_revision(store):
    before = (await store.backend.status()).revision
    with pytest.raises(ConfigInvalid):
        await traffic.handle(traffic.ROUTES, store, "east-1", "echo.demo", "PUT",
                             {"rules": [{"name": "w", "split": [{"subset": {}, "weight": 50}]}]})  # fmt: skip
    with pytest.raises(traffic.UnknownService, match="payments.shop: no such service in cluster east-1"):
        await traffic.handle(traffic.POLICY, store, "east-1", "payments.shop", "PUT", {"failover": ["eu-west"]})
    with pytest.raises(ValidationError, match="is not name.namespace"):
        await traffic.handle(traffic.POLICY, store, "east-1", "payments", "GET")
    for setting in (traffic.POLICY, traffic.ROUTES):
        answer = await traffic.handle(setting, store, "east-1", "echo.demo", "DELETE")
        assert answer["removed"] is False and answer["revision"] == before
    assert (await store.backend.status()).revision == before


async def test_what_is_stored_is_what_was_written(store):
    written = await traffic.handle(traffic.ROUTES, store, "east-1", "echo.demo", "PUT", {"rules": HEADER_RULE})
    read = await traffic.handle(traffic.ROUTES, store, "east-1", "echo.demo", "GET")
    assert read == written == {"cluster": "east-1", "service": "echo.demo", "rules": HEADER_RULE, "stored": True,
                               "revision": written["revision"]}  # fmt: skip
    # An empty list is stored too: no rules, whatever the config's defaults say.
    emptied = await traffic.handle(traffic.ROUTES, store, "east-1", "echo.demo", "PUT", {"rules": []})
    assert emptied["rules"] == [] and emptied["stored"] is True


def test_the_writer_does_no_io_of_its_own():
    tree = ast.parse(Path(traffic.__file__).read_text())
    imported = {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not imported & FORBIDDEN
