"""Traffic policy in the request path: authorization, route rules, faults, trace context and access logs.

Owns `RequestPolicy` (one per gateway: the compiled route tables in force, the `[authz]` policy,
the access-log writer, `isthmus_authz_denials_total`) and `RequestState` (one per request or TCP
connection). `gateway.proxy.Proxy.handle` calls, in order:

    state = policy.start(req, responder, eastwest=...)   # trace context continued or started, record begun
    picker = state.route(service, table)                 # authorize (east-west), match the route,
                                                          # rewrite the path, choose the subset picker
    await state.apply_fault()                            # delay, then abort with the route's status
    state.on_pick(req, endpoint, picker)                 # per attempt: request header edits for that destination
    state.finish(status, reason, counts)                 # the access-log record (and the span), off the hot path

and answers through `state.responder` (response header edits; the trace id in
`x-isthmus-trace-id` beside `x-isthmus-reason`). Which rules apply where:
- the outbound listener (the caller decides) evaluates every rule of the service, with the
  gateway's own cluster as the source; a subset chosen for a remote cluster travels to that
  cluster's gateway in `x-isthmus-subset` (set only here, trusted only from a verified peer);
- the east-west listener evaluates the rules that name a source (`match.source_cluster`,
  `match.source_spiffe_id`, or a fault limited to a source cluster), with the verified peer's
  cluster and SPIFFE ID; it applies the caller's `x-isthmus-subset` when its own rule sets none.

Authorization (`gateway.authz`) runs on the east-west listener when the gateway has an `[authz]`
policy: default deny for clusters that are not linked peers, then exports, then the rules;
without one only the export is checked. Denials answer 403 with `x-isthmus-reason: <reason>`.

With a `[tracing]` table the finished record also goes to `gateway.otlp.SpanExport` as one span
(sampled requests only; a trace the gateway starts is sampled at the table's `sample_ratio`).

Route tables are compiled from each catalog revision in a worker thread with the previous table
as `previous=`; rules that fail to compile leave the previous table in force (one log line).

Must not import `federation`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Counter

from gateway.accesslog import AccessLogWriter
from gateway.authz import AuthzConfigError, AuthzPolicy, Decision, decide
from gateway.config import tracing_options
from gateway.errors import ConfigInvalid, Forbidden, GatewayError
from gateway.headers import PEER_IDENTITY, REASON, REQUEST_ID
from gateway.lb.policy import ServicePolicy
from gateway.policy.accesslog import AccessLogConfig, AccessLogRecord
from gateway.policy.faults import FAULT_REASON, NO_FAULT
from gateway.policy.rules import RoutesConfig, ServiceRoutes
from gateway.policy.table import DEFAULT_DECISION, RequestView, RouteDecision, RouteTable, apply_header_edits
from gateway.policy.trace import SAMPLED, TraceContext, child_of, continue_or_start, format_traceparent
from registry.errors import ValidationError
from registry.model import Catalog, Endpoint, Policy, RouteRules, Service

log = logging.getLogger("isthmus.gateway.policy")

SUBSET = b"x-isthmus-subset"
TRACEPARENT = b"traceparent"
TRACESTATE = b"tracestate"
TRACE_ID = b"x-isthmus-trace-id"
_STRIPPED = frozenset({TRACEPARENT, TRACESTATE})
# Authorization decisions kept per catalog (callers are verified identities of linked clusters,
# but a bound keeps a flood of distinct ones from growing the gateway).
MAX_KEPT_VERDICTS = 4096


class AuthzDenied(Forbidden):
    """The east-west gateway's authorization refused the caller; `reason` is the decision's slug."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class FaultAborted(GatewayError):
    """A route's fault injection chose to abort this request with its configured status."""

    reason = FAULT_REASON

    def __init__(self, status: int) -> None:
        super().__init__(f"fault injected: abort with {status}")
        self.status = status


def traffic_options(raw: Mapping[str, Any], data_dir: Path) -> tuple[AuthzPolicy, AccessLogConfig | None]:
    """The `[authz]` and `[access_log]` tables of a cluster config; `ConfigInvalid` naming the field.

    Access logs are off unless `[access_log]` is present; `path` defaults to `<data_dir>/access.log`
    (`"-"` is stdout) and a relative path is taken from the data directory. `enabled = false`
    turns a present table off.
    """
    try:
        authz = AuthzPolicy.from_mapping(raw.get("authz"))
    except AuthzConfigError as exc:
        raise ConfigInvalid(str(exc)) from None
    _check_tracing(raw)
    section = raw.get("access_log")
    if section is None:
        return authz, None
    if not isinstance(section, Mapping):
        raise ConfigInvalid("access_log: must be a table")
    section = dict(section)
    enabled = section.pop("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigInvalid(f"access_log.enabled: {enabled!r} is not true or false")
    path = section.get("path", "access.log")
    if isinstance(path, str) and path != "-" and path and not Path(path).is_absolute():
        section["path"] = str(Path(data_dir) / path)
    config = AccessLogConfig.from_mapping(section)
    return authz, config if enabled else None


def _check_tracing(raw: Mapping[str, Any]) -> None:
    # [tracing] (span export, `gateway.otlp`): a bad table or a missing `otlp` extra is refused with
    # the other traffic options, before any gateway starts; `gateway.config.tracing_options` reads it.
    if tracing_options(raw) is not None:
        from gateway.otlp import require_sdk

        require_sdk()


def validate_policy(service: str, spec: Any) -> Policy:
    """A service's failover policy as the catalog stores it, checked as the balancers will read it."""
    ServicePolicy.from_mapping(service, spec)
    try:
        return Policy(service, spec)
    except ValidationError as exc:
        raise ConfigInvalid(f'policy "{service}": {exc}') from None


def validate_routes(service: str, rules: Any, catalog: Catalog | None = None) -> RouteRules:
    """A service's route rules as the catalog stores them, checked as the gateways will compile them.

    With `catalog`, unknown services and subsets that no endpoint matches are refused too (the
    write-time check); `ConfigInvalid` names the service and the rule.
    """
    if isinstance(rules, Mapping):
        rules = [rules]
    config = RoutesConfig.from_mapping({service: rules})
    if catalog is not None:
        config.check_catalog(catalog)
        if service not in catalog.services:
            raise ConfigInvalid(f"{service}: no such service in the catalog")
    try:
        return RouteRules(service, rules)
    except ValidationError as exc:
        raise ConfigInvalid(f'routes "{service}": {exc}') from None


def _labels_text(labels: tuple[tuple[str, str], ...]) -> bytes:
    return ",".join(f"{k}={v}" for k, v in labels).encode("latin-1")


def _parse_labels(value: bytes) -> tuple[tuple[str, str], ...]:
    out = []
    for item in value.decode("latin-1").split(","):
        key, sep, val = item.strip().partition("=")
        if sep and key:
            out.append((key, val))
    return tuple(sorted(out))


def _source_rules(routes: RoutesConfig) -> RoutesConfig:
    """Only the rules that name a source: what the east-west listener evaluates."""
    services = {}
    for service, service_routes in routes.services.items():
        rules = tuple(
            rule
            for rule in service_routes.rules
            if rule.match.source_cluster is not None
            or rule.match.source_spiffe_id is not None
            or (rule.fault is not None and rule.fault.source_cluster is not None)
        )
        if rules:
            services[service] = ServiceRoutes(service, rules)
    return RoutesConfig(services)


class RequestPolicy:
    """One gateway's traffic policy: route tables per catalog revision, authorization, access logs."""

    def __init__(
        self,
        *,
        cluster: str,
        trust_domain: str,
        authz: AuthzPolicy | None = None,
        access_log: AccessLogConfig | None = None,
        registry: CollectorRegistry | None = None,
        rng: random.Random | None = None,
        picker_factory: Any = None,
        spans: Any = None,
    ) -> None:
        self.cluster = cluster
        self.trust_domain = trust_domain
        self.authz = authz
        # Trace and span ids need to be unique, not unpredictable: a Mersenne Twister seeded from the OS
        # (as Envoy's mt19937_64) rather than a getrandom(2) system call per id.
        self.rng = rng or random.Random()
        self.routes = RouteTable(RoutesConfig())
        self.source_routes = RouteTable(RoutesConfig())
        self._routes_spec: dict[str, list[Any]] = {}
        self._refused_revision: int | None = None
        self._policy_specs: dict[str, Any] | None = None
        self.picker_factory = picker_factory
        self.base_policies = dict(getattr(picker_factory, "policies", None) or {})
        self._subset_factories: dict[tuple[tuple[str, str], ...], Any] = {}
        self.access_log = AccessLogWriter(access_log, registry=registry) if access_log is not None else None
        self.spans = spans  # gateway.otlp.SpanExport when `[tracing]` is on
        self.denials = Counter(
            "isthmus_authz_denials", "Requests refused by the east-west gateway's authorization",
            ("reason", "source_cluster"), registry=registry,
        )
        # Authorization decisions by (service, caller), for one catalog snapshot and `[authz]` policy.
        self._verdicts: dict[tuple[str, str], Decision] = {}
        self._verdicts_for: tuple[Any, Any] = (None, None)

    # -- catalog revisions -----------------------------------------------------------------------

    def balancer_policies(self, catalog: Catalog) -> dict[str, ServicePolicy] | None:
        """The balancers' policies for this catalog (config defaults, then the catalog's), or None
        when they did not change or do not validate (the previous ones stay, one log line)."""
        specs = {key: policy.spec for key, policy in catalog.policies.items()}
        if specs == self._policy_specs:
            return None
        self._policy_specs = specs
        try:
            parsed = ServicePolicy.from_policies(specs)
        except ConfigInvalid as exc:
            log.warning("catalog revision %s: policies refused, keeping the previous ones: %s", catalog.revision, exc)
            return None
        merged = {**self.base_policies, **parsed}
        for factory in self._subset_factories.values():
            setter = getattr(factory, "set_policies", None)
            if setter is not None:
                setter(merged)
        return merged

    async def on_catalog(self, catalog: Catalog) -> None:
        """Compile the catalog's route rules off the event loop; keep the previous tables on failure."""
        spec = {key: list(routes.rules) for key, routes in catalog.routes.items()}
        if spec == self._routes_spec:
            return
        previous, previous_source = self.routes, self.source_routes

        def compile_tables() -> tuple[RouteTable, RouteTable]:
            config = RoutesConfig.from_mapping(spec)
            full = RouteTable.compile(config, revision=catalog.revision, previous=previous)
            source = RouteTable.compile(_source_rules(config), revision=catalog.revision, previous=previous_source)
            return full, source

        try:
            full, source = await trio.to_thread.run_sync(compile_tables)
        except ConfigInvalid as exc:
            if self._refused_revision != catalog.revision:
                self._refused_revision = catalog.revision
                log.warning("catalog revision %s: route rules refused, keeping revision %s: %s",
                            catalog.revision, self.routes.revision, exc)
            return
        self.routes, self.source_routes = full, source
        self._routes_spec = spec

    def subset_factory(self, labels: tuple[tuple[str, str], ...]) -> Any:
        """Pickers for one subset: a balancer set of their own (outlier state apart from the service's)."""
        factory = self._subset_factories.get(labels)
        if factory is None:
            main = self.picker_factory
            if main is not None and hasattr(main, "set_policies"):
                factory = type(main)(getattr(main, "policies", None), default=getattr(main, "default", None))
            else:
                factory = main
            self._subset_factories[labels] = factory
        return factory

    def authorize(self, service: str, source: str, catalog: Catalog) -> Decision:
        """`gateway.authz.decide` for `source` calling `service`. A decision is a pure function of
        these, the `[authz]` policy and the catalog (an immutable snapshot), so it is kept until
        either is replaced: a request costs a dict lookup instead of parsing the caller's SPIFFE ID
        and matching the rules (about 10 µs)."""
        authz = self.authz
        assert authz is not None
        if self._verdicts_for[0] is not authz or self._verdicts_for[1] is not catalog:
            self._verdicts = {}
            self._verdicts_for = (authz, catalog)
        key = (service, source)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = decide(authz, service=service, source=source, trust_domain=self.trust_domain,
                             local_cluster=self.cluster, linked=catalog.peers, exports=catalog.exports)
            if len(self._verdicts) >= MAX_KEPT_VERDICTS:
                self._verdicts.clear()
            self._verdicts[key] = verdict
        return verdict

    # -- per request -----------------------------------------------------------------------------

    def start(self, req: Any, responder: Any, *, eastwest: bool) -> RequestState:
        return RequestState(self, req, responder, eastwest)

    def log_tcp(self, *, listener: str, source_cluster: str, destination_cluster: str, service: str,
                bytes_in: int, bytes_out: int, started: float, endpoint: str | None = None,
                source_identity: str | None = None) -> None:
        if self.access_log is None:
            return
        now = trio.current_time()
        record = AccessLogRecord(
            time=time.time() - (now - started),
            kind="tcp",
            gateway=self.cluster,
            listener=listener,
            source_identity=source_identity,
            source_cluster=source_cluster,
            destination_service=service,
            destination_cluster=destination_cluster,
            endpoint=endpoint,
            attempts=1,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            duration_ms=(now - started) * 1000.0,
        )
        self.access_log.submit(record)


class PolicyResponder:
    """The downstream responder with the route's response header edits and the trace id on errors."""

    __slots__ = ("inner", "state")

    def __init__(self, inner: Any, state: RequestState) -> None:
        self.inner = inner
        self.state = state

    @property
    def started(self) -> bool:
        return self.inner.started

    async def start(self, status: int, headers: list[tuple[bytes, bytes]], *, end_stream: bool,
                    body_ready: bool = False) -> None:
        state = self.state
        edits = state.decision.response_headers
        if edits:
            endpoint = state.endpoint
            headers = apply_header_edits(
                headers, edits,
                endpoint.cluster if endpoint is not None else None,
                endpoint.locality.region if endpoint is not None else None,
            )
        trace_id = state.trace_id.encode()
        if any(name == REASON for name, _ in headers) and not any(name == TRACE_ID for name, _ in headers):
            # An error answer names its trace beside its reason (the reason stays a bare slug:
            # clients and the caller's metrics match on it).
            headers = [*headers, (TRACE_ID, trace_id)]
        if end_stream:
            state.ended = trio.current_time()
        await self.inner.start(status, headers, end_stream=end_stream, body_ready=body_ready)

    # The request's duration (access log, span) ends when its response's last frame is handed on:
    # the send may happen right away in this task (`H2Conn.flush_stream_end`), and the caller must
    # not see the response end before this hop's span has.

    async def data(self, chunk: bytes, *, end_stream: bool) -> None:
        if end_stream:
            self.state.ended = trio.current_time()
        await self.inner.data(chunk, end_stream=end_stream)

    async def trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.state.ended = trio.current_time()
        await self.inner.trailers(headers)

    async def end(self) -> None:
        self.state.ended = trio.current_time()
        await self.inner.end()

    async def abort(self) -> None:
        await self.inner.abort()


class RequestState:
    """One request's policy state (see the module docstring for the order of calls)."""

    __slots__ = ("policy", "eastwest", "decision", "trace_id", "base_headers", "endpoint", "attempts", "ended",
                 "started", "first_try", "record", "subset", "responder", "peer_identity", "picker", "_edit",
                 "span")

    def __init__(self, policy: RequestPolicy, req: Any, responder: Any, eastwest: bool) -> None:
        self.policy = policy
        self.eastwest = eastwest
        self.decision: RouteDecision = DEFAULT_DECISION
        self.endpoint: Endpoint | None = None
        self.attempts = 0
        self.started = trio.current_time()
        self.ended: float | None = None  # when the response's last frame was handed on (`PolicyResponder`)
        self.first_try: float | None = None
        self.picker: Any = None
        traceparent = tracestate = request_id = peer = subset = None
        kept: list[tuple[bytes, bytes]] = []
        for name, value in req.headers:
            if name == TRACEPARENT:
                traceparent = value
                continue
            if name == TRACESTATE:
                tracestate = value if tracestate is None else tracestate + b"," + value
                continue
            if name == SUBSET:
                if eastwest:
                    subset = value
                continue  # only a verified peer gateway may ask for a subset
            if name == REQUEST_ID:
                request_id = value
            elif name == PEER_IDENTITY:
                peer = value
            kept.append((name, value))
        context, started = continue_or_start(traceparent, tracestate, policy.rng)
        # Span export (`gateway.otlp`): a trace this gateway starts is sampled at `sample_ratio`;
        # this hop's span id is the parent id sent onward, its parent the one the request brought.
        spans = policy.spans
        if spans is not None and started and spans.sample_new(context.trace_id):
            context = TraceContext(context.trace_id, context.parent_id, SAMPLED, context.tracestate)
        child = child_of(context, policy.rng)
        kept.append((TRACEPARENT, format_traceparent(child).encode()))
        if child.tracestate:
            kept.append((TRACESTATE, child.tracestate.encode()))
        req.headers = kept
        self.base_headers = kept
        self._edit = False
        self.trace_id = context.trace_id
        self.subset = _parse_labels(subset) if subset else ()
        self.peer_identity = peer.decode("latin-1") if peer is not None else None
        self.responder = PolicyResponder(responder, self)
        self.span = None
        if spans is not None and context.sampled:
            self.span = (child.parent_id, None if started else context.parent_id)
        self.record: AccessLogRecord | None = None
        if policy.access_log is not None or self.span is not None:
            self.record = AccessLogRecord(
                time=time.time(),
                gateway=policy.cluster,
                listener="eastwest" if eastwest else "outbound",
                request_id=request_id.decode("latin-1") if request_id else None,
                trace_id=context.trace_id,
                source_identity=self.peer_identity,
                source_cluster=req.source_cluster,
                method=req.method.decode("latin-1"),
                authority=req.authority.decode("latin-1"),
                path=req.path.decode("latin-1"),
            )

    def route(self, req: Any, service: Service, table: Any) -> Any:
        """Authorize, match the route rules, rewrite the path; the picker to choose endpoints with."""
        policy = self.policy
        if self.record is not None:
            self.record.destination_service = service.key
        if self.eastwest:
            self._authorize(req, service, table)
            rules = policy.source_routes
        else:
            rules = policy.routes
        view = RequestView(req.method, req.path, req.headers, req.source_cluster, self.peer_identity)
        decision = rules.match(service.key, view, policy.rng)
        self.decision = decision
        if self.record is not None:
            self.record.route = decision.rule
        if decision.rewrite is not None:
            req.path = decision.rewritten_path(req.path.decode("latin-1")).encode("latin-1")
        subset = decision.subset or self.subset
        self.subset = subset
        self._edit = bool(decision.request_headers) or (bool(subset) and not self.eastwest)
        if subset:
            picker = table.subset_picker(service.key, local_only=self.eastwest, subset=subset,
                                         factory=policy.subset_factory(subset))
        else:
            picker = table.picker(service.key, local_only=self.eastwest)
        self.picker = picker
        return picker

    def _authorize(self, req: Any, service: Service, table: Any) -> None:
        policy = self.policy
        catalog = table.catalog
        if policy.authz is None:
            if table.exported_to(service.key, req.source_cluster):
                return
            # Without an `[authz]` policy only the export is checked (the data plane's original answer).
            reason, detail = Forbidden.reason, f"{service.key} is not exported to cluster {req.source_cluster!r}"
        else:
            verdict = policy.authorize(service.key, self.peer_identity or "", catalog)
            if verdict.allowed:
                return
            reason, detail = verdict.reason, verdict.detail
        policy.denials.labels(reason, req.source_cluster or "unknown").inc()
        raise AuthzDenied(reason, detail)

    def route_policies(self) -> tuple[Any, Any]:
        """The route's retry and timeout policies for the attempt loop, or (None, None) for the service's."""
        decision = self.decision
        retry = decision.retry
        if decision.timeout_s is None and retry is None:
            return None, None
        base = getattr(self.picker, "policy", None)
        if not isinstance(base, ServicePolicy):
            base = ServicePolicy()
        return base.for_route(
            timeout_s=decision.timeout_s,
            attempts=None if retry is None else retry.attempts,
            per_try_timeout_s=None if retry is None else retry.per_try_timeout_s,
            retry_on=None if retry is None else retry.retry_on,
        )

    async def apply_fault(self) -> None:
        fault = self.decision.fault
        if fault is NO_FAULT:
            return
        if fault.delay_s > 0:
            await trio.sleep(fault.delay_s)
        if fault.abort_status is not None:
            raise FaultAborted(fault.abort_status)

    def on_pick(self, req: Any, endpoint: Endpoint) -> None:
        """One attempt goes to `endpoint`: the request headers for that destination."""
        self.attempts += 1
        self.endpoint = endpoint
        if self.first_try is None:
            self.first_try = trio.current_time()
        if not self._edit:
            return
        headers = self.base_headers
        edits = self.decision.request_headers
        if edits:
            headers = apply_header_edits(headers, edits, endpoint.cluster, endpoint.locality.region)
        if self.subset and not self.eastwest and endpoint.cluster != self.policy.cluster:
            headers = [*headers, (SUBSET, _labels_text(self.subset))]
        req.headers = headers

    def finish(self, status: int, reason: str, counts: Any, dest_cluster: str) -> None:
        self.responder = None  # it refers back to this state: no cycle left for the garbage collector
        record = self.record
        if record is None:
            return
        now = trio.current_time() if self.ended is None else self.ended
        endpoint = self.endpoint
        record.destination_cluster = None if dest_cluster == "unknown" else dest_cluster
        if endpoint is not None:
            record.endpoint = endpoint.id
            level_of = getattr(self.picker, "level_of", None)
            if level_of is not None:
                record.locality_priority = level_of(endpoint.id)
        record.attempts = self.attempts
        record.response_code = status or None
        record.reason = reason or None
        record.bytes_in = counts.request_bytes
        record.bytes_out = counts.response_bytes
        record.duration_ms = (now - self.started) * 1000.0
        if self.first_try is not None:
            record.upstream_duration_ms = (now - self.first_try) * 1000.0
        if self.policy.access_log is not None:
            self.policy.access_log.submit(record)
        if self.span is not None:
            self.policy.spans.submit(record, *self.span)

