"""The routing table: authority, alias, SNI and port lookups; local-only for east-west; picking."""

from __future__ import annotations

import random

import pytest

from gateway.errors import ClusterUnknown, NoHealthyEndpoint, ServiceUnknown
from gateway.picker import RoundRobinPicker
from gateway.routes import RoutingTable, host_of
from registry.model import Catalog, Endpoint, Export, Health, Locality, Peer, Service

EAST_A = Locality("us-east", "us-east-1a")
EAST_B = Locality("us-east", "us-east-1b")
WEST = Locality("eu-west", "eu-west-1a")


def catalog() -> Catalog:
    endpoints = [
        Endpoint("echo.demo", "east-1", "127.0.1.10", 8080, EAST_A),
        Endpoint("echo.demo", "east-1", "127.0.1.11", 8080, EAST_B),
        Endpoint("echo.demo", "west-1", "127.0.3.10", 8080, WEST),
        Endpoint("hello.demo", "west-1", "127.0.3.11", 8080, WEST),
        Endpoint("sick.demo", "east-1", "127.0.1.12", 8080, EAST_A, health=Health.UNHEALTHY),
    ]
    return Catalog(
        cluster="east-1",
        revision=7,
        services={s.key: s for s in (Service("echo", "demo"), Service("hello", "demo"), Service("sick", "demo"),
                                     Service("db", "demo", protocol="tcp"))},
        endpoints={e.id: e for e in endpoints},
        exports={"echo.demo": Export("echo.demo", ["west-1"])},
        peers={"west-1": Peer("west-1", "eu-west", ("eu-west-1a",), gateway="127.0.3.1:15443")},
    )


def table() -> RoutingTable:
    return RoutingTable(catalog(), cluster="east-1", locality=EAST_A, alias_suffixes=("mesh.example",),
                        tcp_ports={15006: "db.demo"})


@pytest.mark.parametrize("authority", ["echo.demo", "ECHO.demo:8080", "echo.demo.mesh.example", "echo.demo."])
def test_authority_forms_find_the_service(authority):
    assert table().service_for_authority(authority).key == "echo.demo"


def test_unknown_authority_is_service_unknown():
    with pytest.raises(ServiceUnknown):
        table().service_for_authority("nope.demo")


def test_host_of_strips_ports_and_brackets():
    assert host_of("[::1]:443") == "[::1]"
    assert host_of("a.b:80") == "a.b"


def test_sni_and_port_lookups():
    t = table()
    assert t.service_for_sni("hello.demo.mesh.example").key == "hello.demo"
    assert t.service_for_sni(None) is None
    assert t.service_for_port(15006).key == "db.demo"
    with pytest.raises(ServiceUnknown):
        t.service_for_port(1)


def test_east_west_sees_local_endpoints_only():
    t = table()
    assert {e.cluster for e in t.endpoints("echo.demo", local_only=True)} == {"east-1"}
    with pytest.raises(NoHealthyEndpoint):
        t.picker("hello.demo", local_only=True)


def test_outbound_prefers_same_zone_then_cluster_then_remote():
    picker = table().picker("echo.demo", local_only=False)
    rng = random.Random(1)
    assert {picker.pick(0.0, rng).address for _ in range(4)} == {"127.0.1.10"}
    assert picker.pick(0.0, rng, exclude=("east-1/127.0.1.10:8080",)).address == "127.0.1.11"
    remote = picker.pick(0.0, rng, exclude=("east-1/127.0.1.10:8080", "east-1/127.0.1.11:8080"))
    assert remote.cluster == "west-1"


def test_round_robin_spreads_within_a_tier():
    endpoints = [Endpoint("a.b", "c", f"127.0.0.{i}", 80, EAST_A) for i in range(1, 4)]
    picker = RoundRobinPicker(endpoints, cluster="c", locality=EAST_A)
    picks = [picker.pick(0.0, random.Random()).address for _ in range(6)]
    assert sorted(set(picks)) == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


def test_unhealthy_endpoints_are_never_picked():
    with pytest.raises(NoHealthyEndpoint):
        table().picker("sick.demo", local_only=False).pick(0.0, random.Random())


def test_peer_gateway_and_exports():
    t = table()
    assert t.peer_gateway("west-1") == "127.0.3.1:15443"
    with pytest.raises(ClusterUnknown):
        t.peer_gateway("east-2")
    assert t.exported_to("echo.demo", "west-1")
    assert not t.exported_to("echo.demo", "east-2")
    assert not t.exported_to("hello.demo", "west-1")
