"""Sample values for tests and benchmarks of `gateway.policy` (pure, like the package)."""

from __future__ import annotations

from gateway.policy.accesslog import AccessLogRecord


def sample_record(**overrides) -> AccessLogRecord:
    """A cross-region HTTP request's access-log record; `overrides` replace fields."""
    values = dict(
        time=1_764_000_000.123456,
        gateway="east-1",
        listener="outbound",
        request_id="req-1",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        source_identity="spiffe://mesh.example/cluster/east-1/ns/shop/sa/web",
        source_cluster="east-1",
        method="GET",
        authority="checkout.shop",
        path="/api/orders/42",
        route="canary",
        destination_service="checkout.shop",
        destination_cluster="west-1",
        endpoint="west-1/127.0.3.10:8080",
        locality_priority=2,
        attempts=2,
        response_code=200,
        bytes_in=120,
        bytes_out=5120,
        duration_ms=12.3456789,
        upstream_duration_ms=11.0,
    )
    values.update(overrides)
    return AccessLogRecord(**values)
