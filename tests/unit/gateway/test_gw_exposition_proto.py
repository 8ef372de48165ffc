"""The gateway's `/metrics` in Prometheus' protobuf format (`gateway.exposition.render_protobuf`) holds
the same samples as its text format, is chosen only when the scraper's `Accept` prefers it, and is
what makes a 1,000-service scrape fit in 2 MB raw.

The protobuf is read back here with a small wire-format decoder written from `metrics.proto`
(package io.prometheus.client), independent of the encoder; a real Prometheus reads it in
`tests/integration/dashboard/test_dash_prometheus.py`.
"""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.bench import metrics as bench_metrics
from gateway.exposition import PROTOBUF_CONTENT_TYPE, render, render_protobuf, wants_protobuf
from gateway.metrics import GatewayMetrics
from tests.unit.gateway.test_gw_exposition import admin_get, busy_gateway, every_collector_kind, samples

PROMETHEUS_ACCEPT = bench_metrics.PROMETHEUS_ACCEPT.encode()  # what Prometheus 2.42 sends with native-histograms
TYPES = {0: "counter", 1: "gauge", 2: "summary", 3: "untyped", 4: "histogram"}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def fields(data: bytes) -> dict[int, list]:
    """One message's fields: varints as int, fixed64 as float (every fixed64 here is a double), the rest as bytes."""
    out: dict[int, list] = {}
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = struct.unpack("<d", data[pos:pos + 8])[0], pos + 8
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def families(body: bytes) -> list[dict[int, list]]:
    out, pos = [], 0
    while pos < len(body):
        size, pos = _varint(body, pos)
        out.append(fields(body[pos:pos + size]))
        pos += size
    return out


def _value(value: float):
    return "nan" if math.isnan(value) else value


def proto_samples(body: bytes) -> dict[tuple[str, tuple], float]:
    """The samples Prometheus makes of the protobuf: `_bucket`/`_count`/`_sum` for histograms."""
    out = {}
    for family in families(body):
        name, kind = family[1][0].decode(), TYPES[family.get(3, [0])[0]]
        for raw in family.get(4, []):
            metric = fields(raw)
            labels = []
            for pair in metric.get(1, []):
                pair_fields = fields(pair)
                labels.append((pair_fields[1][0].decode(), pair_fields.get(2, [b""])[0].decode()))
            labels.sort()
            if kind == "histogram":
                histogram = fields(metric[7][0])
                for raw_bucket in histogram.get(3, []):
                    bucket = fields(raw_bucket)
                    bound = bucket[2][0]
                    le = "+Inf" if bound == math.inf else repr(float(bound))
                    out[(name + "_bucket", tuple(sorted([*labels, ("le", le)])))] = float(bucket[1][0])
                out[(name + "_count", tuple(labels))] = float(histogram[1][0])
                out[(name + "_sum", tuple(labels))] = _value(histogram[2][0])
            else:
                field = {"counter": 3, "gauge": 2, "untyped": 5}[kind]
                out[(name, tuple(labels))] = _value(fields(metric[field][0])[1][0])
    return out


def normalised(text_samples: dict) -> dict:
    """Text samples with `le` written as Python floats, the way `proto_samples` writes them."""
    out = {}
    for (name, labels), value in text_samples.items():
        labels = tuple(sorted((k, v if k != "le" or v == "+Inf" else repr(float(v))) for k, v in labels))
        out[(name, labels)] = value
    return out


def test_a_gateway_scrape_has_the_same_samples_in_both_formats():
    metrics = busy_gateway()
    body = render_protobuf(metrics.registry)
    assert proto_samples(body) == normalised(samples(render(metrics.registry)))
    kinds = {f[1][0].decode(): TYPES[f[3][0]] for f in families(body)}
    assert kinds["isthmus_requests_total"] == "counter"
    assert kinds["isthmus_request_duration_seconds"] == "histogram"
    assert kinds["isthmus_catalog_revision"] == "gauge"


def test_other_collector_kinds_keep_their_samples():
    registry = every_collector_kind(negative_histogram=False)
    assert proto_samples(render_protobuf(registry)) == normalised(samples(render(registry)))


def test_label_sets_removed_after_a_scrape_leave_the_next_one():
    metrics = busy_gateway()
    first = proto_samples(render_protobuf(metrics.registry))
    metrics.requests.remove("east-1", "west-1", "echo.demo", "200", "http", "")
    metrics.tls_failures.clear()
    second = proto_samples(render_protobuf(metrics.registry))
    assert any(name == "isthmus_tls_handshake_failures_total" for name, _ in first)
    assert not any(name == "isthmus_tls_handshake_failures_total" for name, _ in second)
    assert second == normalised(samples(render(metrics.registry)))


@settings(max_examples=60, deadline=None)
@given(
    label=st.text(min_size=0, max_size=12),
    amount=st.floats(min_value=0, max_value=1e300, allow_nan=False),
    level=st.floats(allow_nan=True, allow_infinity=True),
    duration=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    count=st.integers(min_value=1, max_value=300),
)
def test_any_label_value_and_number_survives_the_encoding(label, amount, level, duration, count):
    metrics = GatewayMetrics()
    for _ in range(count):  # counts past 127 take two varint bytes
        metrics.record_request(("east-1", label, "svc.demo", "200", "http", label), duration, 1, 0)
    metrics.tcp_sent.labels(label, "west-1", "db.demo").inc(amount)
    metrics.active_connections.labels(label).set(level)
    assert proto_samples(render_protobuf(metrics.registry)) == normalised(samples(render(metrics.registry)))


def test_a_thousand_services_in_ten_clusters_fit_in_two_megabytes_raw():
    metrics = GatewayMetrics()
    clusters = [f"cluster-{i:02d}" for i in range(10)]
    for i in range(1000):
        service, home = f"svc-{i:04d}.shop", clusters[i % 10]
        metrics.record_request((clusters[0], home, service, "200", "http", ""), 0.0042, 512, 2048)
        if i % 10 == 0:
            metrics.record_request((clusters[0], home, service, "503", "http", "no-healthy-endpoint"), 0.0003, 0, 24)
    text, body = render(metrics.registry), render_protobuf(metrics.registry)
    assert len(text) > 2_000_000  # the text format repeats every label on every bucket line
    assert len(body) < 1_500_000


@pytest.mark.parametrize(
    ("accept", "protobuf"),
    [
        (PROMETHEUS_ACCEPT, True),
        (b"application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited", True),
        (b"text/plain;version=0.0.4;q=0.5,*/*;q=0.1", False),  # Prometheus without protobuf scraping
        (b"*/*", False),  # curl
        (None, False),
        (b"application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text", False),
        (b"application/vnd.google.protobuf;proto=other.Message;encoding=delimited", False),
        (b"text/plain,application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.5", False),
        (b"application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0", False),
        (b"application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=x", False),
    ],
)
def test_protobuf_is_sent_only_when_the_scraper_prefers_it(accept, protobuf):
    headers = [(b"host", b"127.0.0.1")] + ([(b"accept", accept)] if accept is not None else [])
    assert wants_protobuf(headers) is protobuf


async def test_the_admin_listener_answers_a_prometheus_scrape_in_protobuf():
    headers, body, text = await admin_get(b"/metrics", media=PROMETHEUS_ACCEPT)
    assert headers[b"content-type"] == PROTOBUF_CONTENT_TYPE
    assert proto_samples(body) == normalised(samples(text))
