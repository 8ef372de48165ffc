"""Imports: a peer sees only what was exported to it; a peer that lies is refused item by item."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.imports import (
    IDENTITY_LABEL,
    ExportView,
    MessageRefused,
    PeerContext,
    accept_delta,
    accept_snapshot,
    check_consistency,
    export_view,
    merge,
    view_delta,
    view_to_json,
)
from registry import codec
from registry.model import Catalog, Endpoint, Export, Locality, Peer, Service

WEST = Locality("eu-west", "eu-west-1a")
EAST = Locality("us-east", "us-east-1a")
WEST_ID = "spiffe://mesh.example/cluster/west-1/gateway"


def ep(service, cluster, address, port=8080, locality=WEST, **kw):
    return Endpoint(service=service, cluster=cluster, address=address, port=port, locality=locality, **kw)


def west_catalog(revision=10):
    """west-1's own catalog: echo exported to everyone, hello to east-1, secret to nobody, one imported endpoint."""
    return Catalog(
        cluster="west-1",
        revision=revision,
        services={k: Service.from_key(k) for k in ("echo.demo", "hello.demo", "secret.demo")},
        endpoints={e.id: e for e in [
            ep("echo.demo", "west-1", "127.0.3.10"),
            ep("hello.demo", "west-1", "127.0.3.11"),
            ep("secret.demo", "west-1", "127.0.3.12"),
            ep("echo.demo", "east-2", "127.0.2.10", locality=Locality("us-east", "us-east-1c")),
        ]},
        exports={"echo.demo": Export("echo.demo", ("*",)), "hello.demo": Export("hello.demo", ("east-1",))},
    )  # fmt: skip


CTX = PeerContext.of(
    Peer(name="west-1", region="eu-west", zones=("eu-west-1a",), gateway="127.0.3.1:15443"),
    local="east-1",
    trust_domain="mesh.example",
)


def test_a_peer_sees_only_what_is_exported_to_it_and_never_reexported_imports():
    view = export_view(west_catalog(), "east-1")
    assert set(view.services) == {"echo.demo", "hello.demo"}
    assert sorted(e.address for e in view.endpoints.values()) == ["127.0.3.10", "127.0.3.11"]
    assert view.exports["hello.demo"].to == ("east-1",)
    other = export_view(west_catalog(), "east-2")
    assert set(other.services) == {"echo.demo"}
    assert other.exports["echo.demo"].to == ("east-2",)  # east-2 does not learn who else is linked


def test_an_honest_snapshot_is_accepted_whole():
    view, refusals = accept_snapshot(CTX, view_to_json(export_view(west_catalog(), "east-1")), sender=WEST_ID)
    assert refusals == []
    assert view.revision == 10 and view.origin == "west-1"
    assert {e.cluster for e in view.endpoints.values()} == {"west-1"}
    assert {e.locality for e in view.endpoints.values()} == {WEST}


def lying_snapshot():
    data = view_to_json(export_view(west_catalog(), "east-1"))
    data["services"].append(codec.service_to_dict(Service.from_key("secret.demo")))
    data["endpoints"] += [
        codec.endpoint_to_dict(ep("secret.demo", "west-1", "127.0.3.12")),  # not exported
        codec.endpoint_to_dict(ep("echo.demo", "east-1", "127.0.1.66", locality=EAST)),  # claims to be ours
        codec.endpoint_to_dict(ep("echo.demo", "east-2", "127.0.2.66", locality=EAST)),  # another cluster's
        codec.endpoint_to_dict(ep("echo.demo", "west-1", "127.0.3.67", locality=EAST)),  # wrong locality
        codec.endpoint_to_dict(ep("echo.demo", "west-1", "127.0.3.68",
                                  labels={IDENTITY_LABEL: "spiffe://mesh.example/cluster/east-1/web"})),
        {"service": "echo.demo", "cluster": "west-1", "address": "127.0.3.69", "port": 70000, "locality": "eu-west/eu-west-1a"},
    ]  # fmt: skip
    data["exports"].append({"service": "secret.demo", "to": ["east-2"]})
    return data


def test_a_lying_peer_is_refused_item_by_item_with_reasons():
    view, refusals = accept_snapshot(CTX, lying_snapshot(), sender=WEST_ID)
    assert sorted(e.address for e in view.endpoints.values()) == ["127.0.3.10", "127.0.3.11"]
    assert set(view.services) == {"echo.demo", "hello.demo"}
    reasons = sorted(r.reason for r in refusals)
    assert reasons == sorted([
        "not-exported", "not-exported", "not-exported", "foreign-cluster", "foreign-cluster",
        "foreign-locality", "identity-mismatch", "malformed",
    ])  # fmt: skip
    lines = {str(r) for r in refusals}
    assert "peer west-1: refused endpoint east-1/127.0.1.66:8080: foreign-cluster: belongs to cluster east-1, not west-1" in lines
    assert any("endpoints[7]" in line and "70000 is not a port number" in line for line in lines)
    assert all("\n" not in line for line in lines)


def test_the_local_catalog_is_untouched_by_a_lying_peer():
    local = Catalog(
        cluster="east-1",
        revision=3,
        services={"echo.demo": Service.from_key("echo.demo", ports=(8080,))},
        endpoints={(e := ep("echo.demo", "east-1", "127.0.1.66", locality=EAST)).id: e},
    )
    view, _ = accept_snapshot(CTX, lying_snapshot(), sender=WEST_ID)
    merged = merge(local, [view])
    assert merged.endpoints[e.id] == e
    assert merged.services["echo.demo"].ports == (8080,)  # the local definition wins


@pytest.mark.parametrize(
    ("sender", "mutate", "reason"),
    [
        ("spiffe://mesh.example/cluster/east-2/gateway", None, "identity-mismatch"),
        (None, None, "identity-mismatch"),
        ("spiffe://mesh.example/cluster/west-10/gateway", None, "identity-mismatch"),
        (WEST_ID, {"cluster": "east-2"}, "wrong-origin"),
        (WEST_ID, {"revision": "ten"}, "malformed"),
    ],
)
def test_a_message_from_the_wrong_sender_or_origin_is_refused_whole(sender, mutate, reason):
    data = view_to_json(export_view(west_catalog(), "east-1")) | (mutate or {})
    with pytest.raises(MessageRefused) as info:
        accept_snapshot(CTX, data, sender=sender)
    assert info.value.refusal.reason == reason


def test_deltas_carry_changes_and_removals_in_order():
    before = west_catalog(10)
    new_ep = ep("echo.demo", "west-1", "127.0.3.20")
    after_endpoints = dict(before.endpoints)
    after_endpoints.pop("west-1/127.0.3.11:8080")
    after_endpoints[new_ep.id] = new_ep
    after = Catalog("west-1", 11, before.services, after_endpoints, before.exports)
    delta = view_delta(export_view(before, "east-1"), export_view(after, "east-1"))
    assert delta["remove"]["endpoints"] == ["west-1/127.0.3.11:8080"]
    assert [e["address"] for e in delta["upsert"]["endpoints"]] == ["127.0.3.20"]
    view, _ = accept_snapshot(CTX, view_to_json(export_view(before, "east-1")), sender=WEST_ID)
    view2, refusals = accept_delta(CTX, view, delta, sender=WEST_ID)
    assert refusals == []
    assert view2.endpoints == export_view(after, "east-1").endpoints and view2.revision == 11
    assert check_consistency(view2.endpoints.values(), export_view(after, "east-1").endpoints.values()).ok
    # A delta that does not change what east-1 sees is not sent at all.
    assert view_delta(export_view(after, "east-1"), export_view(attrs_evolve_rev(after, 12), "east-1")) is None


def attrs_evolve_rev(catalog, revision):
    return Catalog(catalog.cluster, revision, catalog.services, catalog.endpoints, catalog.exports)


def test_unexporting_a_service_withdraws_its_endpoints():
    before = west_catalog(10)
    after = Catalog("west-1", 11, before.services, before.endpoints, {"echo.demo": before.exports["echo.demo"]})
    view, _ = accept_snapshot(CTX, view_to_json(export_view(before, "east-1")), sender=WEST_ID)
    view2, _ = accept_delta(CTX, view, view_delta(export_view(before, "east-1"), export_view(after, "east-1")), sender=WEST_ID)
    assert set(view2.services) == {"echo.demo"}
    assert {e.service for e in view2.endpoints.values()} == {"echo.demo"}


def test_a_replayed_delta_is_refused():
    view = ExportView("west-1", 12)
    with pytest.raises(MessageRefused) as info:
        accept_delta(CTX, view, {"type": "delta", "cluster": "west-1", "revision": 12}, sender=WEST_ID)
    assert info.value.refusal.reason == "old-revision"


def test_one_service_in_several_clusters_spans_localities():
    local = Catalog(
        cluster="east-1",
        services={"echo.demo": Service.from_key("echo.demo")},
        endpoints={(e := ep("echo.demo", "east-1", "127.0.1.10", locality=EAST)).id: e},
    )
    view, _ = accept_snapshot(CTX, view_to_json(export_view(west_catalog(), "east-1")), sender=WEST_ID)
    merged = merge(local, [view], revision=7)
    echo = merged.endpoints_of("echo.demo")
    assert list(merged.services) .count("echo.demo") == 1
    assert {(x.cluster, str(x.locality)) for x in echo} == {("east-1", "us-east/us-east-1a"), ("west-1", "eu-west/eu-west-1a")}
    assert merged.revision == 7 and merged.exports == local.exports


def test_consistency_finds_missing_unexpected_and_duplicated_endpoints():
    a = ep("echo.demo", "west-1", "127.0.3.10")
    b = ep("echo.demo", "west-1", "127.0.3.11")
    dup = ep("echo.demo", "west-1", "127.0.3.10", id="other-id")
    report = check_consistency([a, dup], [a, b])
    assert report.missing == ("west-1/127.0.3.11:8080",)
    assert report.unexpected == ("other-id",)
    assert set(report.duplicated) == {"other-id", a.id}
    assert not report.ok
    assert check_consistency([a, b], [b, a]).ok


SERVICES = ["echo.demo", "hello.demo", "db.shop"]


@st.composite
def west_catalogs(draw, revision):
    services = draw(st.sets(st.sampled_from(SERVICES), min_size=1))
    endpoints = {}
    for key in services:
        for host in draw(st.sets(st.integers(1, 30), max_size=6)):
            e = ep(key, "west-1", f"127.0.3.{host}", port=draw(st.sampled_from([8080, 9090])))
            endpoints[e.id] = e
    exports = {}
    for key in draw(st.sets(st.sampled_from(sorted(services)))):
        exports[key] = Export(key, draw(st.sampled_from([("*",), ("east-1",), ("east-2",), ("east-1", "east-2")])))
    return Catalog("west-1", revision, {k: Service.from_key(k) for k in services}, endpoints, exports)


@settings(max_examples=60, deadline=None)
@given(west_catalogs(10), west_catalogs(11))
def test_an_honest_peer_round_trips_snapshots_and_deltas(a, b):
    view, refusals = accept_snapshot(CTX, view_to_json(export_view(a, "east-1")), sender=WEST_ID)
    assert refusals == [] and view.endpoints == export_view(a, "east-1").endpoints
    delta = view_delta(export_view(a, "east-1"), export_view(b, "east-1"))
    if delta is not None:
        view, refusals = accept_delta(CTX, view, delta, sender=WEST_ID)
        assert refusals == []
    want = export_view(b, "east-1")
    assert (view.services, view.endpoints, view.exports) == (want.services, want.endpoints, want.exports)


def test_an_endpoint_id_sent_twice_in_one_message_is_refused():
    data = view_to_json(export_view(west_catalog(), "east-1"))
    twin = dict(data["endpoints"][0], service="hello.demo")
    data["endpoints"].append(twin)
    view, refusals = accept_snapshot(CTX, data, sender=WEST_ID)
    assert [r.reason for r in refusals] == ["duplicate"]
    assert view.endpoints[f"west-1/{twin['address']}:{twin['port']}"].service == "echo.demo"
