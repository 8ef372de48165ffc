"""Traffic policy as pure code: route rules, the compiled route table, fault decisions, W3C trace
context and access-log records.

Every module in this package is a pure decision over values: no trio, no sockets, no clock reads,
no module-level randomness. Time (`now`) and a `random.Random` are arguments. The gateway's I/O
shell builds a `RouteTable` once per catalog revision and calls `RouteTable.match()` per request;
retry and timeout settings found here are plain validated values handed to `gateway.lb`.

Per request, the gateway does (names from this package)::

    context, _ = continue_or_start(traceparent, tracestate, rng)       # trace.py
    decision = table.match(service, RequestView(method, path, headers, source_cluster, spiffe_id), rng)
    # endpoints: those with decision.selects(endpoint); the balancer picks one of them
    # decision.fault: trio.sleep(delay_s), then answer abort_status with x-isthmus-reason FAULT_REASON
    headers = apply_header_edits(headers, decision.request_headers, endpoint.cluster, endpoint.locality.region)
    path = decision.rewritten_path(path)                                # and traceparent = child_of(context, rng)
    # decision.timeout_s and decision.retry feed gateway.lb's timeout and retry policy
    response_headers = apply_header_edits(response_headers, decision.response_headers, cluster, region)
    if access_log.should_log(record, rng): write(access_log.format(record))

Must not import: trio, socket, time, asyncio, `federation`.
"""

from __future__ import annotations

from gateway.policy.accesslog import AccessLogConfig, AccessLogRecord, format_line
from gateway.policy.faults import FAULT_REASON, FaultDecision, decide_fault
from gateway.policy.rules import RouteRule, RoutesConfig, ServiceRoutes
from gateway.policy.table import RequestView, RouteDecision, RouteTable, apply_header_edits
from gateway.policy.trace import (
    TraceContext,
    child_of,
    continue_or_start,
    format_traceparent,
    parse_traceparent,
)

__all__ = [
    "FAULT_REASON",
    "AccessLogConfig",
    "AccessLogRecord",
    "FaultDecision",
    "RequestView",
    "RouteDecision",
    "RouteRule",
    "RouteTable",
    "RoutesConfig",
    "ServiceRoutes",
    "TraceContext",
    "apply_header_edits",
    "child_of",
    "continue_or_start",
    "decide_fault",
    "format_line",
    "format_traceparent",
    "parse_traceparent",
]
