"""Pure catalog diff, apply and merge: the properties gateways and federation rely on."""

from __future__ import annotations

from hypothesis import given

from registry.diff import apply, diff, export_view, merge
from registry.model import Catalog, Endpoint, Export, Locality, Service
from tests.unit.registry.strategies import catalogs


@given(catalogs(), catalogs())
def test_apply_of_diff_gives_the_target(a, b):
    assert apply(a, diff(a, b)) == b


@given(catalogs())
def test_diff_of_a_catalog_with_itself_is_empty(a):
    delta = diff(a, a)
    assert delta.empty
    assert apply(a, delta) == a


@given(catalogs(), catalogs())
def test_delta_touches_only_what_changed(a, b):
    delta = diff(a, b)
    for ident in delta.endpoints_put:
        assert a.endpoints.get(ident) != b.endpoints[ident]
    assert delta.endpoints_removed == set(a.endpoints) - set(b.endpoints)


EAST = Locality("us-east", "us-east-1a")
WEST = Locality("eu-west", "eu-west-1a")


def _catalog(cluster, locality, exports=(), services=("echo.demo",), extra_endpoints=()):
    endpoints = [Endpoint(s, cluster, "127.0.0.1", 8000 + i, locality) for i, s in enumerate(services)]
    endpoints += list(extra_endpoints)
    return Catalog(
        cluster=cluster,
        revision=5,
        services={s: Service.from_key(s) for s in services},
        endpoints={e.id: e for e in endpoints},
        exports={e.service: e for e in exports},
    )


def test_merge_imports_only_exported_services_and_keeps_origin_cluster():
    local = _catalog("east-1", EAST)
    west = _catalog(
        "west-1",
        WEST,
        exports=[Export("hello.demo", ["east-1"]), Export("secret.demo", ["east-2"])],
        services=("echo.demo", "hello.demo", "secret.demo"),
    )
    merged = merge(local, west)
    assert set(merged.services) == {"echo.demo", "hello.demo"}
    imported = [e for e in merged.endpoints.values() if e.service == "hello.demo"]
    assert [(e.cluster, e.locality) for e in imported] == [("west-1", WEST)]
    assert not any(e.service == "secret.demo" for e in merged.endpoints.values())
    assert merged.revision == local.revision and merged.exports == local.exports


def test_a_peer_cannot_speak_for_a_third_cluster():
    foreign = Endpoint("hello.demo", "east-2", "10.9.9.9", 80, Locality("us-east", "us-east-1c"))
    west = _catalog("west-1", WEST, exports=[Export("hello.demo", ["*"])], services=("hello.demo",), extra_endpoints=[foreign])
    merged = merge(_catalog("east-1", EAST), west)
    assert foreign.id not in merged.endpoints


def test_local_service_definition_wins():
    local = Catalog("east-1", 1, services={"echo.demo": Service("echo", "demo", protocol="grpc")})
    west = _catalog("west-1", WEST, exports=[Export("echo.demo", ["*"])])
    merged = merge(local, west)
    assert merged.services["echo.demo"].protocol == "grpc"
    assert {e.cluster for e in merged.endpoints.values()} == {"west-1"}


def test_export_view_shows_exported_services_only():
    catalog = _catalog("west-1", WEST, exports=[Export("hello.demo", ["east-1"])], services=("echo.demo", "hello.demo"))
    assert set(export_view(catalog, "east-1").services) == {"hello.demo"}
    assert export_view(catalog, "east-2").services == {}
