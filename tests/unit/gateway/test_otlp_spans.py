"""Span export (`gateway.otlp`) without sockets: what one request's span says, which requests get
one, how a failing collector is reported, and how lost spans are counted. The SDK's in-memory exporter stands in for OTLP."""

from __future__ import annotations

import logging
import random
import threading
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

pytest.importorskip("opentelemetry.sdk", reason="the otlp extra is not installed (pip install 'isthmus[otlp]')")

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

from gateway.config import TracingConfig  # noqa: E402
from gateway.otlp import MAX_QUEUE_SPANS, SpanExport, sample_new  # noqa: E402
from gateway.policy.testing import sample_record  # noqa: E402
from gateway.policy.trace import parse_traceparent  # noqa: E402
from gateway.request_policy import RequestPolicy  # noqa: E402

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


def open_export(exporter=None, **config) -> tuple[SpanExport, InMemorySpanExporter]:
    memory = exporter or InMemorySpanExporter()
    export = SpanExport(TracingConfig(**config), cluster="east-1", exporter=memory)
    export.start()
    return export, memory


def finished(export: SpanExport, memory: InMemorySpanExporter):
    export.shutdown()
    return memory.get_finished_spans()


def test_an_outbound_record_becomes_one_client_span_with_the_hop_ids_and_the_record_times():
    export, memory = open_export()
    record = sample_record(listener="outbound", duration_ms=12.5)
    export.submit(record, "b7ad6b7169203331", CLIENT_SPAN)
    [span] = finished(export, memory)
    assert span.name == "GET checkout.shop"
    assert span.kind is SpanKind.CLIENT
    assert f"{span.context.trace_id:032x}" == TRACE_ID and f"{span.context.span_id:016x}" == "b7ad6b7169203331"
    assert span.context.trace_flags.sampled
    assert f"{span.parent.span_id:016x}" == CLIENT_SPAN and span.parent.is_remote
    assert span.start_time == int(record.time * 1e9)
    assert span.end_time - span.start_time == 12_500_000
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes) == {
        "http.request.method": "GET",
        "http.response.status_code": 200,
        "server.address": "checkout.shop",
        "url.path": "/api/orders/42",
        "http.request.body.size": 120,
        "http.response.body.size": 5120,
        "isthmus.listener": "outbound",
        "isthmus.request_id": "req-1",
        "isthmus.source_identity": "spiffe://mesh.example/cluster/east-1/ns/shop/sa/web",
        "isthmus.source_cluster": "east-1",
        "isthmus.destination_service": "checkout.shop",
        "isthmus.destination_cluster": "west-1",
        "isthmus.route": "canary",
        "isthmus.endpoint": "west-1/127.0.3.10:8080",
        "isthmus.locality_priority": 2,
        "isthmus.attempts": 2,
    }
    assert span.resource.attributes["service.name"] == "isthmus-east-1"
    assert span.resource.attributes["isthmus.cluster"] == "east-1"


def test_an_eastwest_5xx_is_a_server_span_with_error_status_and_a_started_trace_has_no_parent():
    export, memory = open_export(service_name="edge")
    export.submit(sample_record(listener="eastwest", response_code=503, reason="no-endpoints",
                                authority="checkout.shop:8080", path="/a?b=1", locality_priority=None),
                  "b7ad6b7169203331", None)
    export.submit(sample_record(listener="eastwest", response_code=None, reason="upstream-reset"),
                  "c7ad6b7169203331", None)
    spans = finished(export, memory)
    assert [span.kind for span in spans] == [SpanKind.SERVER, SpanKind.SERVER]
    assert all(span.status.status_code is StatusCode.ERROR and span.parent is None for span in spans)
    first = dict(spans[0].attributes)
    assert first["error.type"] == "no-endpoints" and first["isthmus.reason"] == "no-endpoints"
    assert first["server.address"] == "checkout.shop" and first["server.port"] == 8080
    assert first["url.path"] == "/a" and first["url.query"] == "b=1"
    assert "isthmus.locality_priority" not in first  # unknown values are left out
    assert "http.response.status_code" not in dict(spans[1].attributes)
    assert spans[0].resource.attributes["service.name"] == "edge"


def test_a_4xx_is_not_an_error_span():
    export, memory = open_export()
    export.submit(sample_record(response_code=403, reason="forbidden"), "b7ad6b7169203331", None)
    [span] = finished(export, memory)
    assert span.status.status_code is StatusCode.UNSET and span.attributes["isthmus.reason"] == "forbidden"


def test_the_ratio_of_new_traces_sampled_holds_and_the_decision_is_the_trace_ids():
    rng = random.Random(3)
    ids = [f"{rng.getrandbits(128):032x}" for _ in range(20_000)]
    share = sum(sample_new(trace_id, 0.25) for trace_id in ids) / len(ids)
    assert abs(share - 0.25) < 0.015  # > 5 standard deviations (0.003) of a fair draw
    assert [sample_new(t, 0.25) for t in ids[:100]] == [sample_new(t, 0.25) for t in ids[:100]]
    assert all(sample_new(t, 1.0) for t in ids[:100]) and not any(sample_new(t, 0.0) for t in ids[:100])


def fake_request(headers):
    return SimpleNamespace(headers=list(headers), method=b"GET", authority=b"echo.demo", path=b"/x",
                           source_cluster="east-1")


COUNTS = SimpleNamespace(request_bytes=0, response_bytes=2)


async def one_request(policy: RequestPolicy, headers=(), *, eastwest=False):
    req = fake_request(headers)
    state = policy.start(req, object(), eastwest=eastwest)
    sent = parse_traceparent(dict(req.headers)[b"traceparent"])
    state.finish(200, "", COUNTS, "west-1")
    return sent


async def test_the_span_id_is_the_parent_id_sent_onward_and_new_traces_are_marked_sampled():
    export, memory = open_export()
    policy = RequestPolicy(cluster="east-1", trust_domain="mesh.example", spans=export, rng=random.Random(1))
    started = await one_request(policy)  # no traceparent: this gateway starts the trace
    continued = await one_request(policy, [(b"traceparent", f"00-{TRACE_ID}-{CLIENT_SPAN}-01".encode())])
    unsampled = await one_request(policy, [(b"traceparent", f"00-{TRACE_ID}-{CLIENT_SPAN}-00".encode())])
    spans = finished(export, memory)
    assert started.sampled and continued.sampled and not unsampled.sampled
    assert len(spans) == 2  # the unsampled request has none
    root, child = spans
    assert root.parent is None and f"{root.context.span_id:016x}" == started.parent_id
    assert f"{root.context.trace_id:032x}" == started.trace_id
    assert f"{child.parent.span_id:016x}" == CLIENT_SPAN and f"{child.context.span_id:016x}" == continued.parent_id
    assert child.attributes["isthmus.destination_cluster"] == "west-1"


async def test_a_zero_ratio_leaves_new_traces_unsampled_and_without_spans():
    export, memory = open_export(sample_ratio=0)
    policy = RequestPolicy(cluster="east-1", trust_domain="mesh.example", spans=export)
    sent = await one_request(policy)
    assert not sent.sampled
    assert finished(export, memory) == ()


async def test_without_tracing_new_traces_stay_unsampled_as_before():
    policy = RequestPolicy(cluster="east-1", trust_domain="mesh.example")
    sent = await one_request(policy)
    assert not sent.sampled


class FlakyCollector(SpanExporter):
    def __init__(self) -> None:
        self.up = False
        self.batches = 0

    def export(self, spans):
        self.batches += 1
        return SpanExportResult.SUCCESS if self.up else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        pass


def test_a_collector_outage_is_logged_once_and_its_end_once(caplog):
    collector = FlakyCollector()
    export, _ = open_export(collector, otlp_endpoint="http://127.0.0.1:9/")
    caplog.set_level(logging.WARNING)
    for _ in range(3):
        export.submit(sample_record(), "b7ad6b7169203331", None)
        export.flush()
    collector.up = True
    export.submit(sample_record(), "b7ad6b7169203331", None)
    export.flush()
    export.shutdown()
    lines = [r.getMessage() for r in caplog.records if r.name == "isthmus.gateway.otlp"]
    assert collector.batches == 4
    assert lines == [
        "tracing: cannot export isthmus-east-1 spans to http://127.0.0.1:9/v1/traces; requests go on, spans "
        "are dropped until it answers (logged once)",
        "tracing: exporting isthmus-east-1 spans to http://127.0.0.1:9/v1/traces again (3 spans were lost)",
    ]


def counted(registry: CollectorRegistry) -> dict[str, float]:
    return {
        "exported": registry.get_sample_value("isthmus_trace_spans_exported_total") or 0.0,
        "queue-full": registry.get_sample_value("isthmus_trace_spans_dropped_total", {"reason": "queue-full"}) or 0.0,
        "export-failed": registry.get_sample_value("isthmus_trace_spans_dropped_total",
                                                   {"reason": "export-failed"}) or 0.0,
    }  # fmt: skip


class StuckCollector(SpanExporter):
    """Takes no batch until released: the export thread falls behind."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.spans = 0

    def export(self, spans):
        self.release.wait(30)
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


def test_a_stuck_collector_drops_new_spans_at_the_queue_limit_and_counts_them():
    registry = CollectorRegistry()
    collector = StuckCollector()
    export = SpanExport(TracingConfig(), cluster="east-1", exporter=collector, registry=registry)
    export.start()
    extra = 25
    for _ in range(MAX_QUEUE_SPANS + extra):
        export.submit(sample_record(), "b7ad6b7169203331", None)
    assert counted(registry) == {"exported": 0.0, "queue-full": extra, "export-failed": 0.0}
    collector.release.set()
    export.shutdown()
    assert collector.spans == MAX_QUEUE_SPANS  # every span taken in was exported, none pushed out
    assert counted(registry) == {"exported": MAX_QUEUE_SPANS, "queue-full": extra, "export-failed": 0.0}


def test_failed_batches_are_counted_as_dropped_and_a_raising_exporter_does_not_wedge_the_queue():
    class Raising(SpanExporter):
        def export(self, spans):
            raise RuntimeError("exporter bug")

        def shutdown(self) -> None:
            pass

    registry = CollectorRegistry()
    export = SpanExport(TracingConfig(), cluster="east-1", exporter=Raising(), registry=registry)
    export.start()
    for _ in range(3):
        export.submit(sample_record(), "b7ad6b7169203331", None)
        export.flush()
    export.shutdown()
    assert counted(registry) == {"exported": 0.0, "queue-full": 0.0, "export-failed": 3.0}
    assert export.submitted - export.exporter.exported - export.exporter.lost == 0
