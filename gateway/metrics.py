"""The gateway's Prometheus metrics, in their own `CollectorRegistry` (one per gateway, never the global one).

Names follow Istio's standard metrics where they mean the same thing, with the `isthmus_` prefix,
so existing dashboards translate: `isthmus_requests_total`, `isthmus_request_duration_seconds`,
`isthmus_request_bytes_total`, `isthmus_response_bytes_total`, `isthmus_tcp_connections_opened_total`,
`isthmus_tcp_connections_closed_total`, `isthmus_tcp_sent_bytes_total`,
`isthmus_tcp_received_bytes_total`, plus `isthmus_tls_handshake_failures_total{listener,reason}`.
Failover (METRICS.md "Failover and endpoints"): `isthmus_endpoints{service,cluster,locality,state}`,
`isthmus_active_priority{service}`, `isthmus_failover_transitions_total{service,from_priority,
to_priority}`, `isthmus_retries_total{destination_service,reason}`,
`isthmus_timeouts_total{destination_service}`, `isthmus_circuit_breakers_open{destination_service,
destination_cluster}`, `isthmus_certificate_expiry_seconds{identity}`, `isthmus_catalog_stale_seconds`;
`gateway.failover` refreshes the gauges from the balancers once a second.
Recording is cheap enough for the hot path: label children are cached per label tuple.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway import exposition

REQUEST_LABELS = (
    "source_cluster",
    "destination_cluster",
    "destination_service",
    "response_code",
    "request_protocol",
    "reason",
)
TCP_LABELS = ("source_cluster", "destination_cluster", "destination_service")
# 11 bounds (12 series with +Inf per label set; Istio has 14): 1 ms, the floor of a Python L7 hop;
# 1-10 ms in-region crossings; 25-250 ms cross-region RTTs and the drills' 250 ms p99 SLO; 0.5-1 s
# brownouts and retries; 5 s past a 2 s connect timeout and its retry; beyond, +Inf (requests the
# 30 s timeout ends are counted by `response_code="504"` and `isthmus_timeouts_total`).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)


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
        self.endpoints = Gauge(
            "isthmus_endpoints", "Endpoints known for a service, by state",
            ("service", "cluster", "locality", "state"), registry=r,
        )
        self.active_priority = Gauge(
            "isthmus_active_priority", "Priority level serving the service now (0 = local zone)", ("service",),
            registry=r,
        )
        self.failover_transitions = Counter(
            "isthmus_failover_transitions", "Changes of a service's active priority",
            ("service", "from_priority", "to_priority"), registry=r,
        )
        self.retries = Counter(
            "isthmus_retries", "Retries attempted, by the failed try's reason", ("destination_service", "reason"),
            registry=r,
        )
        self.timeouts = Counter(
            "isthmus_timeouts", "Requests ended by their timeout (504)", ("destination_service",), registry=r
        )
        self.circuit_breakers_open = Gauge(
            "isthmus_circuit_breakers_open", "1 while the circuit breaker to that upstream is open",
            ("destination_service", "destination_cluster"), registry=r,
        )
        self.certificate_expiry = Gauge(
            "isthmus_certificate_expiry_seconds", "Seconds until the certificate in use expires", ("identity",),
            registry=r,
        )
        self.catalog_stale = Gauge(
            "isthmus_catalog_stale_seconds", "Age of the catalog in force once its source stopped answering",
            registry=r,
        )
        self._children: dict[tuple[str, ...], tuple] = {}

    def record_retry(self, service: str, reason: str) -> None:
        self.retries.labels(service, reason).inc()

    def record_timeout(self, service: str) -> None:
        self.timeouts.labels(service).inc()

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
        """The text exposition of the registry: label strings cached per label set, no `_created`."""
        return exposition.render(self.registry)

    def exposition_for(self, request_headers: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
        """`(content type, body)` for a `/metrics` request: protobuf when its `Accept` prefers it, else text."""
        return exposition.negotiate(self.registry, request_headers)
