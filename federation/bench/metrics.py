"""`isthmus bench metrics`: time and size of one gateway `/metrics` scrape with 1,000 services in 10 clusters.

A synthetic `gateway.metrics.GatewayMetrics` holds what a busy gateway would: one request series per
service (to its home cluster), an error series for every tenth service, and TCP series for every
twentieth. Rows:

- `today`: `GatewayMetrics.render()` (prometheus_client's `generate_latest`), as served now;
- `+ failover families`: the same plus the endpoint and priority gauges METRICS.md adds per service;
- `cached text`: a prototype renderer that writes the same samples from the gateway's per-label-set
  child cache with label strings formatted once (the text parses to the same samples; checked);
- each with the gzip size, since Prometheus scrapes with `Accept-Encoding: gzip`;
and how long the dashboard's reader (`federation.dashboard.model.parse_metrics`) takes on one scrape.

Goals (issue 8): one scrape ≤ 50 ms and ≤ 2 MB.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import time
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from federation.bench._machine import write_results

HELP = "time and size of one gateway /metrics scrape with 1,000 services and 10 clusters"
GOAL_MS = 50.0
GOAL_BYTES = 2_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--services", type=int, default=1000, help="services (default: %(default)s)")
    parser.add_argument("--clusters", type=int, default=10, help="clusters (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=5, help="scrapes timed per row; the median is kept")


def synthetic_gateway(services: int, clusters: int) -> Any:
    from gateway.metrics import GatewayMetrics

    metrics = GatewayMetrics()
    names = [f"cluster-{i:02d}" for i in range(clusters)]
    for i in range(services):
        service, home = f"svc-{i:04d}.shop", names[i % clusters]
        metrics.record_request((names[0], home, service, "200", "http", ""), 0.0042, 512, 2048)
        if i % 10 == 0:
            metrics.record_request((names[0], home, service, "503", "http", "no-healthy-endpoint"), 0.0003, 0, 24)
        if i % 20 == 0:
            labels = (names[0], home, service)
            metrics.tcp_opened.labels(*labels).inc()
            metrics.tcp_sent.labels(*labels).inc(4096)
    metrics.catalog_revision.set(42)
    return metrics


def failover_families(services: int, clusters: int) -> CollectorRegistry:
    """The per-service gauges METRICS.md adds (endpoints by state, active priority)."""
    registry = CollectorRegistry()
    endpoints = Gauge("isthmus_endpoints", "Endpoints by state", ("service", "cluster", "locality", "state"),
                      registry=registry)  # fmt: skip
    priority = Gauge("isthmus_active_priority", "Active priority", ("service",), registry=registry)
    for i in range(services):
        service, cluster = f"svc-{i:04d}.shop", f"cluster-{i % clusters:02d}"
        endpoints.labels(service, cluster, f"region-{i % clusters // 3}/zone-{i % clusters}", "healthy").set(3)
        priority.labels(service).set(0)
    return registry


class CachedText:
    """Prototype: the per-request families written from `GatewayMetrics`' child cache, label strings
    formatted once per label set; the small families still through prometheus_client."""

    def __init__(self, metrics: Any) -> None:
        self.metrics = metrics
        self.prefixes: dict[tuple[str, ...], tuple[str, list[str]]] = {}
        self.small = CollectorRegistry(auto_describe=False)
        for collector in (metrics.tcp_opened, metrics.tcp_closed, metrics.tcp_sent, metrics.tcp_received,
                          metrics.tls_failures, metrics.catalog_revision, metrics.active_connections):  # fmt: skip
            self.small.register(collector)

    def render(self) -> bytes:
        m = self.metrics
        names = m.requests._labelnames
        req, dur, rqb, rsb = [], [], [], []
        for labels, (requests, duration, req_bytes, resp_bytes) in m._children.items():
            cached = self.prefixes.get(labels)
            if cached is None:
                text = ",".join(f'{k}="{v}"' for k, v in zip(names, labels, strict=True))
                bounds = [f'isthmus_request_duration_seconds_bucket{{{text},le="{floatToGoString(b)}"}} '
                          for b in duration._upper_bounds]  # fmt: skip
                cached = self.prefixes[labels] = (text, bounds)
            text, bounds = cached
            req.append(f"isthmus_requests_total{{{text}}} {requests._value.get()}\n")
            total = 0.0
            for prefix, bucket in zip(bounds, duration._buckets, strict=True):
                total += bucket.get()
                dur.append(f"{prefix}{total}\n")
            dur.append(f"isthmus_request_duration_seconds_count{{{text}}} {total}\n")
            dur.append(f"isthmus_request_duration_seconds_sum{{{text}}} {duration._sum.get()}\n")
            rqb.append(f"isthmus_request_bytes_total{{{text}}} {req_bytes._value.get()}\n")
            rsb.append(f"isthmus_response_bytes_total{{{text}}} {resp_bytes._value.get()}\n")
        head = "# TYPE {0} {1}\n"
        body = "".join([
            head.format("isthmus_requests_total", "counter"), *req,
            head.format("isthmus_request_duration_seconds", "histogram"), *dur,
            head.format("isthmus_request_bytes_total", "counter"), *rqb,
            head.format("isthmus_response_bytes_total", "counter"), *rsb,
        ])  # fmt: skip
        return body.encode() + generate_latest(self.small)


def samples_of(text: bytes) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def measure(render: Any, repeat: int) -> tuple[float, bytes]:
    times = []
    body = b""
    for _ in range(repeat):
        start = time.perf_counter()  # a benchmark measures wall time; not library code
        body = render()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), body


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    metrics = synthetic_gateway(args.services, args.clusters)
    extra = failover_families(args.services, args.clusters)
    cached = CachedText(metrics)
    rows = []
    for name, render in (
        ("today", metrics.render),
        ("+ failover families", lambda: metrics.render() + generate_latest(extra)),
        ("cached text", cached.render),
        ("cached text + failover families", lambda: cached.render() + generate_latest(extra)),
    ):
        ms, body = measure(render, args.repeat)
        start = time.perf_counter()
        packed = gzip.compress(body, compresslevel=1)
        gzip_ms = (time.perf_counter() - start) * 1000
        rows.append({"renderer": name, "render_ms": round(ms, 2), "bytes": len(body), "gzip_bytes": len(packed),
                     "gzip_ms": round(gzip_ms, 2), "series_lines": body.count(b"\n") - body.count(b"\n#"),
                     "meets_time_goal": ms <= GOAL_MS, "meets_size_goal": len(body) <= GOAL_BYTES,
                     "meets_size_goal_gzip": len(packed) <= GOAL_BYTES})  # fmt: skip
    same = samples_of(metrics.render()) == samples_of(cached.render())
    from federation.dashboard.model import parse_metrics

    body = metrics.render()
    parse_ms, _ = measure(lambda: parse_metrics(body), args.repeat)
    table = Table(title=f"/metrics scrape: {args.services} services, {args.clusters} clusters "
                        f"(goal ≤ {GOAL_MS:.0f} ms, ≤ {GOAL_BYTES / 1e6:.0f} MB)")  # fmt: skip
    for column in ("renderer", "render ms", "size MB", "gzip MB", "gzip ms", "lines"):
        table.add_column(column, justify="left" if column == "renderer" else "right")
    for r in rows:
        table.add_row(r["renderer"], f"{r['render_ms']:.1f}", f"{r['bytes'] / 1e6:.2f}", f"{r['gzip_bytes'] / 1e6:.3f}",
                      f"{r['gzip_ms']:.1f}", str(r["series_lines"]))  # fmt: skip
    console = Console()
    console.print(table)
    console.print(f"cached text parses to the same samples as today's output: {same}")
    console.print(f"the dashboard reads one such scrape in {parse_ms:.1f} ms (federation.dashboard.model.parse_metrics)")
    path = write_results(args.out, {
        "benchmark": "metrics", "services": args.services, "clusters": args.clusters, "repeat": args.repeat,
        "goal_ms": GOAL_MS, "goal_bytes": GOAL_BYTES, "cached_text_same_samples": same, "rows": rows,
        "dashboard_parse_ms": round(parse_ms, 2),
    })  # fmt: skip
    console.print(f"wrote {path}")
    return 0 if same else 1
