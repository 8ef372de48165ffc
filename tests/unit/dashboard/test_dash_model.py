"""The dashboard's view model from Prometheus text: rates, success, quantiles, share, events, warnings."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from federation.dashboard.model import MeshModel, MetricsParseError, Target, parse_metrics, quantile

LABELS = ("source_cluster", "destination_cluster", "destination_service", "response_code", "request_protocol", "reason")
EAST = Target("gateway east-1", "gateway", "east-1", url="http://127.0.0.1:1/metrics", region="us-east",
              zones=("us-east-1a",))
WEST = Target("gateway west-1", "gateway", "west-1", url="http://127.0.0.1:2/metrics", region="eu-west",
              zones=("eu-west-1a",))
CONTROL = Target("control east-1", "control", "east-1", region="us-east", zones=("us-east-1a",))


class FakeGateway:
    """A gateway registry shaped like `gateway.metrics.GatewayMetrics` (the names of METRICS.md)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("isthmus_requests", "", LABELS, registry=r)
        self.duration = Histogram("isthmus_request_duration_seconds", "", LABELS, registry=r,
                                  buckets=(0.001, 0.01, 0.1, 1.0))
        self.transitions = Counter("isthmus_failover_transitions", "", ("service", "from_priority", "to_priority"),
                                   registry=r)
        self.probe_up = Gauge("isthmus_peer_probe_up", "", ("source_cluster", "destination_cluster"), registry=r)
        self.rtt = Gauge("isthmus_peer_probe_rtt_seconds", "", ("source_cluster", "destination_cluster"), registry=r)
        self.stale = Gauge("isthmus_catalog_stale_seconds", "", (), registry=r)
        self.expiry = Gauge("isthmus_certificate_expiry_seconds", "", ("identity",), registry=r)
        self.endpoints = Gauge("isthmus_endpoints", "", ("service", "cluster", "locality", "state"), registry=r)

    def serve(self, service: str, dst: str, n: int, *, code: str = "200", seconds: float = 0.005) -> None:
        labels = ("east-1", dst, service, code, "http", "")
        self.requests.labels(*labels).inc(n)
        for _ in range(n):
            self.duration.labels(*labels).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)


def test_rates_success_and_latency_over_the_window():
    gw, model = FakeGateway(), MeshModel(rate_window_s=10)
    model.ingest_round(1000.0, [(EAST, gw.text())])
    for t in range(1, 6):
        gw.serve("echo.demo", "west-1", 18, seconds=0.005)
        gw.serve("echo.demo", "west-1", 2, code="503", seconds=0.5)
        model.ingest_round(1000.0 + t, [(EAST, gw.text())])
    view = model.overview(1005.0)
    (echo,) = view["services"]
    assert echo["name"] == "echo.demo"
    assert echo["rps"] == pytest.approx(20.0)
    assert echo["success_rate"] == pytest.approx(0.9)
    assert 1.0 < echo["p50_ms"] <= 10.0
    assert 100.0 < echo["p99_ms"] <= 1000.0
    assert [(s["cluster"], s["fraction"], s["rps"]) for s in echo["share"]] == [("west-1", 1.0, 18.0)]
    assert [p["destination"] for p in view["pairs"]] == ["west-1"]
    assert len(echo["history"]) == 5


def test_first_scrape_alone_shows_no_rate_but_the_target_is_up():
    gw, model = FakeGateway(), MeshModel()
    gw.serve("echo.demo", "east-1", 50)
    model.ingest_round(10.0, [(EAST, gw.text())])
    view = model.overview(10.0)
    assert view["targets"][0]["state"] == "up"
    assert view["services"] == [] or view["services"][0]["rps"] == 0


def test_counter_reset_counts_as_a_restart_not_a_negative_rate():
    gw, model = FakeGateway(), MeshModel()
    gw.serve("echo.demo", "east-1", 100)
    model.ingest_round(0.0, [(EAST, gw.text())])
    restarted = FakeGateway()
    restarted.serve("echo.demo", "east-1", 4)
    model.ingest_round(1.0, [(EAST, restarted.text())])
    (echo,) = model.overview(1.0)["services"]
    assert echo["rps"] == pytest.approx(4.0)


def test_an_unreachable_gateway_is_shown_with_since_and_reason():
    gw, model = FakeGateway(), MeshModel()
    model.ingest_round(100.0, [(EAST, gw.text()), (WEST, ConnectionRefusedError("connection refused"))])
    model.ingest_round(101.0, [(EAST, gw.text()), (WEST, ConnectionRefusedError("connection refused"))])
    view = model.overview(101.0)
    west = next(t for t in view["targets"] if t["cluster"] == "west-1")
    assert west["state"] == "unreachable" and west["since"] == 100.0
    assert "connection refused" in west["error"]
    (warning,) = [w for w in view["warnings"] if w["kind"] == "unreachable"]
    assert "gateway west-1" in warning["message"] and "unreachable since" in warning["message"]
    region = next(r for r in view["regions"] if r["name"] == "eu-west")
    assert region["clusters"][0]["gateways"][0]["state"] == "unreachable"
    # it comes back: up again, since the moment it answered
    model.ingest_round(102.0, [(EAST, gw.text()), (WEST, gw.text())])
    west = next(t for t in model.overview(102.0)["targets"] if t["cluster"] == "west-1")
    assert west["state"] == "up" and west["since"] == 102.0


def test_garbage_instead_of_metrics_is_an_unreachable_target():
    model = MeshModel()
    model.ingest_round(1.0, [(EAST, b"<html>hello</html>\n")])
    (target,) = model.overview(1.0)["targets"]
    assert target["state"] == "unreachable" and "not Prometheus text" in target["error"]
    with pytest.raises(MetricsParseError):
        parse_metrics("isthmus_requests_total not-a-number\n")


def test_traffic_moving_to_another_locality_is_a_failover_event():
    gw, model = FakeGateway(), MeshModel()
    model.ingest_round(0.0, [(EAST, gw.text()), (WEST, gw.text())])
    for t in range(1, 4):
        gw.serve("echo.demo", "east-1", 10)
        model.ingest_round(float(t), [(EAST, gw.text()), (WEST, FakeGateway().text())])
    assert model.overview(3.0)["events"] == []
    for t in range(4, 6):
        gw.serve("echo.demo", "west-1", 10)
        model.ingest_round(float(t), [(EAST, gw.text()), (WEST, FakeGateway().text())])
    (event,) = model.overview(5.0)["events"]
    assert event["kind"] == "traffic-moved" and event["at"] == 4.0
    assert event["from"] == "us-east/us-east-1a (east-1)" and event["to"] == "eu-west/eu-west-1a (west-1)"


def test_failover_transitions_counter_makes_events_with_direction():
    gw, model = FakeGateway(), MeshModel()
    model.ingest_round(0.0, [(EAST, gw.text())])
    gw.transitions.labels("echo.demo", "0", "1").inc()
    model.ingest_round(1.0, [(EAST, gw.text())])
    gw.transitions.labels("echo.demo", "1", "0").inc()
    model.ingest_round(2.0, [(EAST, gw.text())])
    events = model.overview(2.0)["events"]
    assert [(e["kind"], e["at"]) for e in events] == [("failback", 2.0), ("failover", 1.0)]


def test_mesh_map_links_probe_state_rtt_and_down_since():
    gw, model = FakeGateway(), MeshModel()
    gw.probe_up.labels("east-1", "west-1").set(1)
    gw.rtt.labels("east-1", "west-1").set(0.0123)
    gw.probe_up.labels("east-1", "east-2").set(0)
    model.ingest_round(50.0, [(CONTROL, gw.text())])
    model.ingest_round(51.0, [(CONTROL, gw.text())])
    view = model.overview(51.0)
    links = {(link["source"], link["destination"]): link for link in view["links"]}
    assert links[("east-1", "west-1")]["state"] == "up" and links[("east-1", "west-1")]["rtt_ms"] == 12.3
    assert links[("east-1", "east-2")]["state"] == "down" and links[("east-1", "east-2")]["since"] == 50.0
    assert any(w["kind"] == "link-down" and "east-2" in w["message"] for w in view["warnings"])
    clusters = {c["name"] for r in view["regions"] for c in r["clusters"]}
    assert clusters == {"east-1", "west-1", "east-2"}


def test_stale_catalog_and_expiring_certificates_are_warnings():
    gw, model = FakeGateway(), MeshModel()
    gw.stale.set(120)
    gw.expiry.labels("spiffe://mesh.example/cluster/east-1/gateway").set(3600)
    gw.expiry.labels("spiffe://mesh.example/cluster/east-1/control").set(90 * 86400)
    model.ingest_round(1.0, [(EAST, gw.text())])
    warnings = {w["kind"]: w for w in model.overview(1.0)["warnings"]}
    assert "stale for 120 s" in warnings["stale"]["message"]
    assert warnings["certificate"]["severity"] == "critical"
    assert "east-1/gateway expires in 1.0 h" in warnings["certificate"]["message"]
    assert sum(w["kind"] == "certificate" for w in model.overview(1.0)["warnings"]) == 1


def test_endpoints_by_state_are_summed_per_service():
    gw, model = FakeGateway(), MeshModel()
    gw.endpoints.labels("echo.demo", "east-1", "us-east/us-east-1a", "healthy").set(2)
    gw.endpoints.labels("echo.demo", "east-1", "us-east/us-east-1a", "ejected").set(1)
    model.ingest_round(1.0, [(EAST, gw.text())])
    (echo,) = model.overview(1.0)["services"]
    assert echo["endpoints"] == {"healthy": 2, "ejected": 1}


def test_a_target_that_disappears_from_the_list_is_forgotten():
    gw, model = FakeGateway(), MeshModel()
    model.ingest_round(1.0, [(EAST, gw.text()), (WEST, gw.text())])
    model.ingest_round(2.0, [(EAST, gw.text())])
    assert [t["name"] for t in model.overview(2.0)["targets"]] == ["gateway east-1"]


def test_quantile_matches_prometheus_interpolation():
    buckets = {0.1: 10.0, 0.2: 20.0, math.inf: 20.0}
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.75, buckets) == pytest.approx(0.15)
    assert quantile(0.99, {0.1: 0.0, math.inf: 5.0}) == pytest.approx(0.1)
    assert quantile(0.5, {}) is None and quantile(0.5, {1.0: 0.0, math.inf: 0.0}) is None


@given(st.lists(st.floats(min_value=0, max_value=100), min_size=2, max_size=8),
       st.floats(min_value=0.01, max_value=0.99))
def test_quantile_stays_within_the_finite_bounds(counts, q):
    bounds = [0.001 * 2**i for i in range(len(counts))]
    cumulative, total = {}, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        total += count
        cumulative[bound] = total
    cumulative[math.inf] = total
    value = quantile(q, cumulative)
    if total == 0:
        assert value is None
    else:
        assert 0 <= value <= bounds[-1]


def test_bench_gateway_renders_the_same_samples_as_generate_latest():
    from prometheus_client import generate_latest

    from federation.bench.metrics import samples_of, synthetic_gateway

    metrics = synthetic_gateway(30, 3)
    assert samples_of(metrics.render()) == samples_of(generate_latest(metrics.registry))


def test_the_view_model_is_pure():
    import ast
    import inspect

    import federation.dashboard.model as model

    tree = ast.parse(inspect.getsource(model))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"trio", "httpx", "socket", "time", "gateway", "random"}


def test_reader_agrees_with_prometheus_clients_parser():
    from prometheus_client.parser import text_string_to_metric_families

    from federation.bench.metrics import synthetic_gateway

    gw = FakeGateway()
    gw.serve('we"ird\\name\nwith <b>html</b>, commas={}', "east-1", 3)
    gw.probe_up.labels("east-1", "west-1").set(1)
    for text in (gw.text(), synthetic_gateway(40, 4).render()):
        expected = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples
            if (s.name, tuple(sorted(s.labels.items()))) and not s.name.endswith("_created")
            and s.name.startswith(("isthmus_requests_total", "isthmus_request_duration", "isthmus_peer", "isthmus_catalog"))
        }
        got = {k: v for k, v in parse_metrics(text).items() if k[0] in {e[0] for e in expected}}
        assert got == expected
