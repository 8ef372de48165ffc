"""The gateway's `/metrics` text (`gateway.exposition`) says what prometheus_client's `generate_latest`
says, minus the `_created` series, follows new and removed label sets, and is gzip-compressed on the
admin listener when the scraper accepts it."""

from __future__ import annotations

import gzip
import math

import h11
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    Summary,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeHistogramMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from federation.bench.metrics import strip_created
from gateway.admin import accepts_gzip, serve_admin_connection
from gateway.exposition import TextExposition, render
from gateway.metrics import GatewayMetrics


def samples(text: bytes) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            value = "nan" if math.isnan(sample.value) else sample.value
            out[(sample.name, tuple(sorted(sample.labels.items())))] = value
    return out


def busy_gateway() -> GatewayMetrics:
    metrics = GatewayMetrics()
    metrics.record_request(("east-1", "west-1", "echo.demo", "200", "http", ""), 0.0042, 512, 2048)
    metrics.record_request(("east-1", "west-1", "echo.demo", "200", "http", ""), 0.3, 0, 12_345_678)
    metrics.record_request(("east-1", "east-1", "hello.demo", "503", "http2", "no-healthy-endpoint"), 45.0, 0, 24)
    metrics.record_request(('we"ird', "back\\slash", "new\nline.demo", "0", "grpc", "ünïcode"), 0.01, 1, 1)
    metrics.tcp_opened.labels("east-1", "west-1", "db.demo").inc()
    metrics.tcp_sent.labels("east-1", "west-1", "db.demo").inc(4096)
    metrics.tls_failures.labels("eastwest", "unknown-ca").inc(3)
    metrics.active_connections.labels("outbound").set(7)
    metrics.active_connections.labels("eastwest").set(-0.0)  # printed "-0.0", though equal to 0.0
    metrics.catalog_revision.set(42)
    return metrics


def test_a_gateway_scrape_has_generate_latests_samples_without_created():
    metrics = busy_gateway()
    ours, theirs = metrics.render(), generate_latest(metrics.registry)
    assert b"_created" not in ours
    expected = {key: value for key, value in samples(theirs).items() if not key[0].endswith("_created")}
    assert samples(ours) == expected
    assert ours == strip_created(theirs)  # same order, escaping and number formatting, byte for byte
    assert b'isthmus_requests_total{destination_cluster="west-1",destination_service="echo.demo"' in ours
    assert b'le="+Inf"' in ours and b"isthmus_response_bytes_total" in ours and b"1.2347726e+07" in ours


def test_label_sets_added_or_removed_after_a_scrape_show_in_the_next_one():
    metrics = busy_gateway()
    first = samples(metrics.render())
    labels = ("east-1", "west-1", "new.demo", "200", "http", "")
    metrics.record_request(labels, 0.002, 1, 1)
    metrics.record_request(("east-1", "west-1", "echo.demo", "200", "http", ""), 0.002, 1, 1)
    second = samples(metrics.render())
    new = tuple(sorted(zip(metrics.requests._labelnames, labels, strict=True)))
    assert ("isthmus_requests_total", new) not in first
    assert second[("isthmus_requests_total", new)] == 1.0
    echo = next(key for key in second if key[0] == "isthmus_requests_total" and ("destination_service", "echo.demo") in key[1])
    assert first[echo] == 2.0 and second[echo] == 3.0  # values are read at each scrape, never cached
    metrics.requests.remove(*labels)
    metrics.tls_failures.clear()
    third = metrics.render()
    assert ("isthmus_requests_total", new) not in samples(third)
    assert b"isthmus_tls_handshake_failures_total{" not in third
    assert third == strip_created(generate_latest(metrics.registry))


class _Custom:
    def collect(self):
        counter = CounterMetricFamily("custom_events", "Custom events", labels=["kind"])
        counter.add_metric(["a"], 2.0, timestamp=1700000000.5)
        yield counter
        yield GaugeHistogramMetricFamily("custom_queue", "Queue depth", buckets=[("1.0", 4.0), ("+Inf", 5.0)],
                                         gsum_value=3.0)  # fmt: skip


def every_collector_kind(*, negative_histogram: bool = True) -> CollectorRegistry:
    """A registry with one of each collector kind a process may register beside the gateway's own."""
    registry = CollectorRegistry(target_info={"cluster": "east-1"})
    Summary("rtt_seconds", "Probe RTT", ["peer"], registry=registry).labels("west-1").observe(0.2)
    Info("build", "Build", registry=registry).info({"version": "1.0"})
    Enum("state", "State", states=["up", "down"], registry=registry).state("down")
    Gauge("temperature", "Function gauge", registry=registry).set_function(lambda: 21.5)
    Counter("plain", "Unlabelled counter", registry=registry).inc(2)
    if negative_histogram:  # the text format writes no `_sum` for it; the protobuf always has one
        Histogram("negative", "Negative buckets", buckets=(-1, 0, 1), registry=registry).observe(-0.5)
    Gauge("empty", "A labelled family with no series yet", ["x"], registry=registry)
    registry.register(_Custom())
    return registry


def test_every_other_collector_kind_comes_out_as_generate_latest_writes_it():
    registry = every_collector_kind()
    ours = render(registry)
    assert b"_created" not in ours
    assert ours == strip_created(generate_latest(registry))


def test_created_series_stay_on_for_registries_rendered_elsewhere():
    metrics = busy_gateway()
    metrics.render()
    other = CollectorRegistry()
    Counter("control_requests", "Control-plane requests", registry=other).inc()
    assert b"control_requests_created" in generate_latest(other)


@settings(max_examples=60, deadline=None)
@given(
    label=st.text(min_size=0, max_size=12),
    amount=st.floats(min_value=0, allow_nan=False),
    level=st.floats(allow_nan=True, allow_infinity=True),
    duration=st.floats(min_value=0, max_value=1e6, allow_nan=False),
)
def test_any_label_value_and_number_is_written_as_generate_latest_writes_it(label, amount, level, duration):
    metrics = GatewayMetrics()
    metrics.record_request(("east-1", label, "svc.demo", "200", "http", label), duration, 1, 0)
    metrics.tcp_sent.labels(label, "west-1", "db.demo").inc(amount)
    metrics.active_connections.labels(label).set(level)
    metrics.active_connections.labels(label + "-").set(-level)
    assert metrics.render() == strip_created(generate_latest(metrics.registry))


def test_a_thousand_service_scrape_is_well_under_two_megabytes_gzipped():
    metrics = GatewayMetrics()
    for i in range(1000):
        service, home = f"svc-{i:04d}.shop", f"cluster-{i % 10:02d}"
        metrics.record_request(("cluster-00", home, service, "200", "http", ""), 0.0042, 512, 2048)
    renderer = TextExposition(metrics.registry)
    body = renderer.render()
    assert body.count(b"isthmus_request_duration_seconds_bucket{") == 1000 * 12  # 11 bounds and +Inf
    assert len(gzip.compress(body, compresslevel=1)) < 200_000
    assert renderer.render() == body  # the second scrape, from the cache, is the same text


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        (b"gzip", True),
        (b"gzip, deflate, br", True),
        (b"br;q=1.0, GZIP;q=0.5", True),
        (b"*", True),
        (b"identity", False),
        (b"gzip;q=0", False),
        (b"gzip;q=0, *", False),
        (b"gzip;q=nonsense", False),
        (None, False),
    ],
)
def test_gzip_is_used_only_when_the_scraper_accepts_it(header, accepted):
    headers = [(b"host", b"127.0.0.1")] + ([(b"accept-encoding", header)] if header is not None else [])
    assert accepts_gzip(headers) is accepted


async def admin_get(path: bytes, *, method: bytes = b"GET", accept: bytes | None = None,
                    media: bytes | None = None):
    """(response headers, body, the text exposition) of one request to an admin listener serving a
    busy gateway's `/metrics`; `accept` is `Accept-Encoding`, `media` is `Accept`."""
    metrics = busy_gateway()
    routes = {
        b"/metrics": lambda headers: (200, *metrics.exposition_for(headers)),
        b"/healthz": lambda headers: (200, b"text/plain", b"ok\n"),
        b"/big": lambda headers: (200, b"text/plain", b"isthmus_up 1.0\n" * 40_000),
    }
    client, server = trio.testing.memory_stream_pair()
    client_conn = h11.Connection(h11.CLIENT)
    headers = [(b"host", b"127.0.0.1")] + ([(b"accept-encoding", accept)] if accept else [])
    headers += [(b"accept", media)] if media else []
    response, body = None, b""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_admin_connection, server, routes)
        await client.send_all(client_conn.send(h11.Request(method=method, target=path, headers=headers))
                              + client_conn.send(h11.EndOfMessage()))  # fmt: skip
        while True:
            event = client_conn.next_event()
            if event is h11.NEED_DATA:
                client_conn.receive_data(await client.receive_some(1 << 20))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
    return dict(response.headers), body, metrics.render()


async def test_metrics_are_gzipped_for_a_scraper_that_accepts_gzip():
    headers, body, plain = await admin_get(b"/metrics", accept=b"gzip")
    assert headers[b"content-encoding"] == b"gzip"
    assert headers[b"vary"] == b"accept-encoding"
    assert headers[b"content-type"] == b"text/plain; version=0.0.4; charset=utf-8"
    assert gzip.decompress(body) == plain
    assert int(headers[b"content-length"]) == len(body) < len(plain)


async def test_metrics_stay_plain_for_a_scraper_that_does_not_accept_gzip():
    headers, body, plain = await admin_get(b"/metrics")
    assert b"content-encoding" not in headers
    assert body == plain


async def test_small_answers_and_head_requests_stay_correct_with_gzip_accepted():
    headers, body, _ = await admin_get(b"/healthz", accept=b"gzip")
    assert b"content-encoding" not in headers and body == b"ok\n"
    headers, body, _ = await admin_get(b"/metrics", method=b"HEAD", accept=b"gzip")
    assert headers[b"content-encoding"] == b"gzip" and body == b""
    assert int(headers[b"content-length"]) > 0


async def test_a_large_scrape_is_compressed_off_the_event_loop_and_arrives_whole():
    headers, body, _ = await admin_get(b"/big", accept=b"gzip")
    assert headers[b"content-encoding"] == b"gzip"
    assert gzip.decompress(body) == b"isthmus_up 1.0\n" * 40_000


def test_counters_that_keep_growing_past_the_number_memo_still_print_exactly():
    registry = CollectorRegistry()
    counter = Counter("sent_bytes", "Bytes", ["peer"], registry=registry)
    renderer = TextExposition(registry)
    for scrape in range(3):
        for i in range(5000):
            counter.labels(f"p{i}").inc(i * 7 + scrape * 1_000_003)
        assert renderer.render() == strip_created(generate_latest(registry))
