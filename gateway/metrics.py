"""The gateway's Prometheus metrics, in their own `CollectorRegistry` (one per gateway, never the global one).

Names follow Istio's standard metrics where they mean the same thing, with the `isthmus_` prefix,
so existing dashboards translate: `isthmus_requests_total`, `isthmus_request_duration_seconds`,
`isthmus_request_bytes_total`, `isthmus_response_bytes_total`, `isthmus_tcp_connections_opened_total`,
`isthmus_tcp_connections_closed_total`, `isthmus_tcp_sent_bytes_total`,
`isthmus_tcp_received_bytes_total`, plus `isthmus_tls_handshake_failures_total{listener,reason}`.
Recording is cheap enough for the hot path: label children are cached per label tuple.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REQUEST_LABELS = (
    "source_cluster",
    "destination_cluster",
    "destination_service",
    "response_code",
    "request_protocol",
    "reason",
)
TCP_LABELS = ("source_cluster", "destination_cluster", "destination_service")
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("isthmus_requests", "Requests served, by outcome", REQUEST_LABELS, registry=r)
        self.duration = Histogram(
            "isthmus_request_duration_seconds",
            "Time from a request's headers to its response's end",
            REQUEST_LABELS,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.request_bytes = Counter("isthmus_request_bytes", "Request body bytes", REQUEST_LABELS, registry=r)
        self.response_bytes = Counter("isthmus_response_bytes", "Response body bytes", REQUEST_LABELS, registry=r)
        self.tcp_opened = Counter("isthmus_tcp_connections_opened", "TCP connections proxied", TCP_LABELS, registry=r)
        self.tcp_closed = Counter("isthmus_tcp_connections_closed", "TCP connections closed", TCP_LABELS, registry=r)
        self.tcp_sent = Counter("isthmus_tcp_sent_bytes", "Bytes sent to the upstream", TCP_LABELS, registry=r)
        self.tcp_received = Counter(
            "isthmus_tcp_received_bytes", "Bytes received from the upstream", TCP_LABELS, registry=r
        )
        self.tls_failures = Counter(
            "isthmus_tls_handshake_failures", "Refused TLS handshakes", ("listener", "reason"), registry=r
        )
        self.catalog_revision = Gauge("isthmus_catalog_revision", "Revision of the catalog in force", registry=r)
        self.active_connections = Gauge(
            "isthmus_active_connections", "Open downstream connections", ("listener",), registry=r
        )
        self._children: dict[tuple[str, ...], tuple] = {}

    def record_request(
        self,
        labels: tuple[str, str, str, str, str, str],
        duration_s: float,
        request_bytes: int,
        response_bytes: int,
    ) -> None:
        children = self._children.get(labels)
        if children is None:
            children = (
                self.requests.labels(*labels),
                self.duration.labels(*labels),
                self.request_bytes.labels(*labels),
                self.response_bytes.labels(*labels),
            )
            self._children[labels] = children
        requests, duration, req_bytes, resp_bytes = children
        requests.inc()
        duration.observe(duration_s)
        if request_bytes:
            req_bytes.inc(request_bytes)
        if response_bytes:
            resp_bytes.inc(response_bytes)

    def render(self) -> bytes:
        return generate_latest(self.registry)
