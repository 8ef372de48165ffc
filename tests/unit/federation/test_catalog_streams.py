"""The catalog streams: snapshot or deltas by revision and epoch, folded back by the gateway's source."""

from __future__ import annotations

from contextlib import aclosing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.catalog_stream import CatalogHub, ExportHub, catalog_delta
from gateway.control_source import StreamState, delta_from_json, delta_to_json
from registry import codec
from registry.diff import diff
from registry.errors import ValidationError
from registry.model import Catalog, Endpoint, Export, Locality, Service

LOC = Locality("us-east", "us-east-1a")


def catalog(revision, addresses, exported=True):
    eps = [Endpoint("echo.demo", "east-1", a, 8080, LOC) for a in addresses]
    return Catalog(
        "east-1", revision, {"echo.demo": Service.from_key("echo.demo")}, {e.id: e for e in eps},
        {"echo.demo": Export("echo.demo", ("west-1",))} if exported else {},
    )  # fmt: skip


async def take(iterator, n):
    out = []
    async with aclosing(iterator) as it:
        async for message in it:
            out.append(message)
            if len(out) == n:
                break
    return out


def test_the_hub_numbers_changes_and_skips_non_changes():
    hub = CatalogHub("east-1")
    assert hub.publish(catalog(7, ["127.0.1.10"])).revision == 1
    assert hub.publish(catalog(8, ["127.0.1.10"])) is None  # same content, newer registry revision
    assert hub.publish(catalog(9, ["127.0.1.11"])).revision == 2


async def test_a_gateway_resumes_with_deltas_in_the_same_epoch_and_a_snapshot_otherwise(autojump_clock):
    hub = CatalogHub("east-1")
    hub.publish(catalog(1, ["127.0.1.10"]))
    hub.publish(catalog(2, ["127.0.1.10", "127.0.1.11"]))
    [resumed] = await take(hub.watch_gateway(1, hub.epoch), 1)
    assert resumed["type"] == "delta" and (resumed["from"], resumed["revision"]) == (1, 2)
    assert [e["address"] for e in resumed["delta"]["endpoints_put"]] == ["127.0.1.11"]
    [other_epoch] = await take(hub.watch_gateway(1, "another-run"), 1)
    assert other_epoch["type"] == "snapshot" and other_epoch["revision"] == 2
    snapshot, heartbeat = await take(hub.watch_gateway(None, None, heartbeat_s=5), 2)
    assert heartbeat == {"type": "heartbeat", "epoch": hub.epoch, "revision": 2}


def test_the_gateway_source_folds_snapshot_and_deltas_and_refuses_gaps():
    hub = CatalogHub("east-1")
    a = hub.publish(catalog(1, ["127.0.1.10"]))
    b = hub.publish(catalog(2, ["127.0.1.11"]))
    state = StreamState()
    assert state.feed({"type": "snapshot", "epoch": hub.epoch, "revision": 1, "catalog": codec.catalog_to_json(a)}) == a
    got = state.feed({"type": "delta", "epoch": hub.epoch, "from": 1, "revision": 2, "delta": delta_to_json(diff(a, b))})
    assert got == b
    assert state.resume_query() == {"from": "2", "epoch": hub.epoch}
    with pytest.raises(ValidationError, match="does not follow revision 2"):
        state.feed({"type": "delta", "epoch": hub.epoch, "from": 5, "revision": 6, "delta": delta_to_json(diff(a, b))})
    assert state.feed({"type": "heartbeat", "epoch": hub.epoch, "revision": 2}) is None


def test_delta_json_round_trips():
    delta = diff(catalog(1, ["127.0.1.10", "127.0.1.12"]), catalog(2, ["127.0.1.11", "127.0.1.12"], exported=False))
    assert delta_from_json(delta_to_json(delta)) == delta


async def test_a_peer_resumes_from_a_remembered_revision_or_gets_a_snapshot(autojump_clock):
    hub = ExportHub("east-1")
    hub.publish(catalog(4, ["127.0.1.10"]))
    hub.publish(catalog(5, ["127.0.1.10", "127.0.1.11"]))
    confirm, delta = await take(hub.watch_exports("west-1", 4), 2)
    assert confirm == {"type": "heartbeat", "cluster": "east-1", "revision": 4}  # resumed: confirmed at once
    assert delta["type"] == "delta" and delta["revision"] == 5
    [snapshot] = await take(hub.watch_exports("west-1", 2), 1)
    assert snapshot["type"] == "snapshot" and len(snapshot["endpoints"]) == 2
    [nothing_for_you] = await take(hub.watch_exports("east-2", 0), 1)
    assert nothing_for_you["services"] == [] and nothing_for_you["endpoints"] == []


@settings(max_examples=50, deadline=None)
@given(st.sets(st.integers(1, 20)), st.sets(st.integers(1, 20)), st.booleans())
def test_the_identity_shortcut_diff_agrees_with_the_registry_diff(a_hosts, b_hosts, exported):
    a = catalog(1, [f"127.0.1.{h}" for h in a_hosts])
    shared = {k: a.endpoints.get(k, v) for k, v in catalog(2, [f"127.0.1.{h}" for h in b_hosts]).endpoints.items()}
    b = Catalog("east-1", 2, a.services, shared, a.exports if exported else {})
    assert catalog_delta(a, b) == diff(a, b)
