"""A cluster's summary for a linked peer (built from its own overview, exported services only) and
the checks on a peer's summary: a lying peer's answer is refused in one line, never shown."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.dashboard import model as model_module
from federation.dashboard import summary as summary_module
from federation.dashboard.model import PEER_KEEP_S, MeshModel
from federation.dashboard.summary import (
    MAX_SERVICES,
    MAX_SUMMARY_BYTES,
    OTHER_CLUSTERS,
    SummaryRefused,
    build_summary,
    decode_summary,
    parse_summary,
)
from tests.unit.dashboard.test_dash_model import EAST, FakeGateway

T0 = 1_800_000_000.0


def busy_model() -> MeshModel:
    """east-1's dashboard after 5 s of traffic: echo.demo (exported) and secret.demo (not)."""
    gw, model = FakeGateway(), MeshModel()
    gw.expiry.labels("spiffe://mesh.example/cluster/east-1/gateway").set(86400 * 30)
    model.ingest_round(T0, [(EAST, gw.text())])
    for t in range(1, 6):
        gw.serve("echo.demo", "east-1", 19, seconds=0.005)
        gw.serve("echo.demo", "east-1", 1, code="503", seconds=0.5)
        gw.serve("secret.demo", "east-1", 5)
        gw.transitions.labels("echo.demo", "0", "1").inc(1 if t == 3 else 0)
        gw.transitions.labels("secret.demo", "0", "1").inc(1 if t == 3 else 0)
        model.ingest_round(T0 + t, [(EAST, gw.text())])
    return model


def mine(**changes) -> dict:
    """A valid summary of west-1 (as west-1 builds it), with `changes` applied."""
    data = {
        "version": 1, "cluster": "west-1", "region": "eu-west", "zones": ["eu-west-1a"], "generated_at": T0,
        "gateways": [{"name": "gateway west-1", "state": "up", "since": T0 - 60}],
        "catalog_revision": 7, "stale_s": 0.0, "cert_expiry_s": 86400.0,
        "services": [{"name": "hello.demo", "rps": 12.5, "success_rate": 0.99, "p50_ms": 1.2, "p99_ms": 9.8,
                      "share": [{"locality": "eu-west/eu-west-1a", "cluster": "west-1", "fraction": 1.0}],
                      "active_locality": "eu-west/eu-west-1a (west-1)"}],
        "events": [{"at": T0 - 5, "service": "hello.demo", "kind": "failover", "from": "priority 0", "to": "priority 1"}],
    }  # fmt: skip
    data.update(changes)
    return data


def service(**changes) -> dict:
    return {**mine()["services"][0], **changes}


def test_the_summary_is_the_overview_narrowed_to_what_the_peer_may_see():
    model = busy_model()
    view = model.overview(T0 + 5)
    summary = model.summary(T0 + 5, cluster="east-1", region="us-east", zones=("us-east-1a",), services={"echo.demo"})
    assert [s["name"] for s in summary["services"]] == ["echo.demo"]  # secret.demo is not exported to the peer
    (echo,) = summary["services"]
    (expected,) = [s for s in view["services"] if s["name"] == "echo.demo"]
    for key in ("rps", "success_rate", "p50_ms", "p99_ms", "active_locality"):
        assert echo[key] == expected[key]  # the overview's numbers, not a second computation
    assert echo["rps"] == pytest.approx(20.0) and echo["success_rate"] == pytest.approx(0.95)
    assert summary["gateways"] == [{"name": "gateway east-1", "state": "up", "since": T0}]
    assert summary["cert_expiry_s"] == pytest.approx(86400 * 30)
    assert [(e["service"], e["kind"]) for e in summary["events"]] == [("echo.demo", "failover")]
    wire = json.dumps(summary).encode()
    assert len(wire) < 2048  # numbers only: a few hundred bytes per service
    assert decode_summary(wire, expect_cluster="east-1") == summary  # what we send, a peer accepts


def test_a_summary_names_no_cluster_but_its_own_and_the_viewers():
    """east-1's echo.demo traffic went to east-1, west-1 and east-2; west-1 sees east-2 only as 'other clusters'."""
    overview = {
        "generated_at": T0, "regions": [], "targets": [],
        "services": [{
            "name": "echo.demo", "rps": 10.0, "success_rate": 1.0, "p50_ms": 1.0, "p99_ms": 2.0,
            "share": [{"locality": "us-east/us-east-1a", "cluster": "east-1", "fraction": 0.5},
                      {"locality": "us-east/us-east-1c", "cluster": "east-2", "fraction": 0.3},
                      {"locality": "eu-west/eu-west-1a", "cluster": "west-1", "fraction": 0.2}],
            "active_locality": "us-east/us-east-1c (east-2)"}],
        "events": [{"at": T0, "service": "echo.demo", "kind": "traffic-moved",
                    "from": "us-east/us-east-1a (east-1)", "to": "us-east/us-east-1c (east-2)"}],
    }  # fmt: skip
    summary = build_summary(overview, cluster="east-1", region="us-east", zones=(), services={"echo.demo"},
                            viewer="west-1")  # fmt: skip
    (echo,) = summary["services"]
    assert [(p["cluster"], p["fraction"]) for p in echo["share"]] == [("east-1", 0.5), ("west-1", 0.2),
                                                                      (OTHER_CLUSTERS, 0.3)]  # fmt: skip
    assert echo["active_locality"] == OTHER_CLUSTERS
    (event,) = summary["events"]
    assert (event["from"], event["to"]) == ("us-east/us-east-1a (east-1)", OTHER_CLUSTERS)
    assert "east-2" not in json.dumps(summary)
    assert decode_summary(json.dumps(summary).encode(), expect_cluster="east-1") == summary


def test_the_summary_caps_services_at_the_busiest():
    gw, model = FakeGateway(), MeshModel()
    model.ingest_round(T0, [(EAST, gw.text())])
    names = [f"svc{i:04d}.demo" for i in range(MAX_SERVICES + 50)]
    for i, name in enumerate(names):
        gw.serve(name, "east-1", 1 + i)
    model.ingest_round(T0 + 1, [(EAST, gw.text())])
    summary = model.summary(T0 + 1, cluster="east-1", region="us-east", zones=(), services=names)
    assert len(summary["services"]) == MAX_SERVICES
    assert summary["services"][0]["name"] == names[-1]  # the busiest first
    assert parse_summary(json.loads(json.dumps(summary)), expect_cluster="east-1")["services"] == summary["services"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("<html>", "summary: str, not an object"),
        (mine(version=2), "version: 2 is not 1"),
        (mine(cluster="east-2"), "cluster: 'east-2' answered for west-1"),
        (mine(extra=1), "summary: unknown field 'extra'"),
        (mine(services=[service(rps="12")]), "services[0].rps: '12' is not a number"),
        (mine(services=[service(rps=True)]), "services[0].rps: True is not a number"),
        (mine(services=[service(rps=math.nan)]), "services[0].rps: nan is outside [0, 1e+09]"),
        (mine(services=[service(p99_ms=1e308)]), "services[0].p99_ms: 1e+308 is outside [0, 1e+07]"),
        (mine(services=[service(success_rate=-0.1)]), "services[0].success_rate: -0.1 is outside [0, 1]"),
        (mine(catalog_revision=10**400), "catalog_revision: 1000000000000000000000000000000000000... is outside"),
        (mine(services=[service(name="<script>alert(1)</script>")]), "services[0].name: '<script>alert(1)</script>' is not a name"),
        (mine(services=[service(active_locality="a" * 500)]), "services[0].active_locality: 'aaaa"),
        (mine(services=[service(name=f"s{i}.demo") for i in range(10_000)]), "services: 10000 items, more than the 100"),
        (mine(gateways=[{"name": "gateway west-1", "state": "fine", "since": None}]), "gateways[0].state: 'fine' is not one of"),
        (mine(events=[{**mine()["events"][0], "kind": "<b>"}]), "events[0].kind: '<b>' is not one of"),
        (mine(services={"hello.demo": {}}), "services: dict, not a list"),
        (mine(services=[service(share=[{"locality": "x", "cluster": "y", "fraction": 2}])]), "share[0].fraction: 2 is outside"),
    ],
)  # fmt: skip
def test_a_lying_summary_is_refused_in_one_line(data, reason):
    with pytest.raises(SummaryRefused) as refused:
        parse_summary(data, expect_cluster="west-1")
    message = str(refused.value)
    assert reason in message and "\n" not in message and len(message) < 200


def test_bytes_that_are_not_a_summary_are_refused():
    for body, reason in [
        (b"<html><body>502</body></html>", "not JSON: JSONDecodeError"),
        (b"[" * 100_000, "not JSON: RecursionError"),
        (b"NaN", "summary: float, not an object"),
        (b" " * (MAX_SUMMARY_BYTES + 1), f"more than the {MAX_SUMMARY_BYTES} a summary may take"),
    ]:  # fmt: skip
        with pytest.raises(SummaryRefused, match=reason):
            decode_summary(body, expect_cluster="west-1")


JSON = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=20)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(garbage=JSON, key=st.sampled_from(sorted(summary_module.TOP_KEYS)))
def test_any_value_in_any_field_is_accepted_or_refused_never_an_error(garbage, key):
    try:
        parse_summary(mine(**{key: garbage}), expect_cluster="west-1")
    except SummaryRefused:
        pass
    try:
        parse_summary(mine(services=[garbage]), expect_cluster="west-1")
    except SummaryRefused:
        pass


def test_the_model_keeps_the_last_good_summary_and_says_since_when_the_peer_is_silent():
    model = MeshModel()
    assert model.set_peer_summary("west-1", json.dumps(mine()).encode(), T0) is None
    (peer,) = model.overview(T0 + 1)["peers"]
    assert peer["state"] == "ok" and peer["health"] == "ok" and peer["age_s"] == 1.0
    assert peer["summary"]["services"][0]["rps"] == 12.5

    # It lies: refused, one line to log however often it repeats; the last good one stays, not current.
    hostile = json.dumps(mine(services=[service(name="<script>x</script>")])).encode()
    line = model.set_peer_summary("west-1", hostile, T0 + 2)
    assert line == "peer west-1: summary refused: services[0].name: '<script>x</script>' is not a name"
    assert model.set_peer_summary("west-1", hostile, T0 + 4) is None
    (peer,) = model.overview(T0 + 4)["peers"]
    assert peer["state"] == "refused" and peer["since"] == T0 + 2 and not peer["current"]
    assert peer["health"] == "silent" and peer["summary"]["services"][0]["name"] == "hello.demo"
    assert "<script>" not in json.dumps(peer["summary"])

    # It stops answering: one line, a warning naming since when; after PEER_KEEP_S the old data goes.
    assert model.set_peer_failure("west-1", "HTTP 503: control-plane-unavailable", T0 + 6) is not None
    assert model.set_peer_failure("west-1", "HTTP 503: control-plane-unavailable", T0 + 8) is None
    view = model.overview(T0 + 8)
    (warning,) = [w for w in view["warnings"] if w["kind"] == "peer-summary"]
    assert warning["message"].startswith("peer west-1 sends no summary since ") and "503" in warning["message"]
    assert model.overview(T0 + PEER_KEEP_S + 1)["peers"][0]["summary"] is None

    # It answers again; unlinking it forgets it.
    assert model.set_peer_summary("west-1", mine(), T0 + 400) == "peer west-1: summary received again"
    assert model.overview(T0 + 400)["peers"][0]["current"]
    model.forget_peers([])
    assert model.overview(T0 + 400)["peers"] == []


def test_a_peers_summary_colours_its_node_on_the_map():
    model = busy_model()
    model.set_peer_summary("west-1", mine(gateways=[{"name": "gateway west-1", "state": "unreachable", "since": T0}]), T0)
    model.set_peer_summary("east-1", mine(cluster="east-1"), T0)  # a node known from the scrape
    clusters = {c["name"]: c for r in model.overview(T0 + 5)["regions"] for c in r["clusters"]}
    assert clusters["east-1"]["peer_health"] == "ok"
    assert "west-1" not in clusters  # a summary alone adds no node: the map comes from metrics
    (west,) = [p for p in model.overview(T0 + 5)["peers"] if p["name"] == "west-1"]
    assert west["health"] == "degraded"


@pytest.mark.parametrize("module", [summary_module, model_module])
def test_summary_and_model_stay_pure(module):
    tree = ast.parse(Path(module.__file__).read_text())
    imported = {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not imported & {"trio", "socket", "httpx", "hypercorn", "asyncio", "time", "gateway"}
