"""One gateway process: its listeners, its catalog in force, draining, and `serve_gateway`.

Composition of the data plane (DESIGN "How a request crosses"):
- east-west listener: peeks the TLS ClientHello; a `passthrough` service named by SNI is pumped
  at L4 to a local endpoint without terminating TLS; anything else is terminated with mutual TLS,
  the peer's SPIFFE ID verified and carried on each request, then served as HTTP/2 or HTTP/1.1 by
  ALPN (routed by `:authority`/`Host`) or, for a `tcp` service named by SNI, pumped at L4; local
  endpoints only. The reserved authority `federation.isthmus` goes to this cluster's control plane
  with the verified identity (`gateway.federation_route`).
- outbound listener (loopback): HTTP/1.1 or h2c (prior-knowledge preface) from local workloads,
  plus one loopback listener per configured TCP port.
- admin listener (loopback): metrics, readiness, health, the catalog.
A catalog update builds a new `RoutingTable` and swaps one reference; requests keep the table
they started with. SIGTERM (or `Gateway.drain()`) stops accepting, lets in-flight work finish up
to `drain_timeout_s`, then closes everything.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import h2.exceptions
import h11
import trio

from certs.errors import IdentityRejected
from certs.tls import classify_handshake_error, peer_identity
from gateway.admin import AdminRoute, Headers, certificate_summary, json_body, serve_admin_connection
from gateway.authz import AuthzPolicy
from gateway.catalog_source import CatalogSource
from gateway.config import GatewayConfig, TracingConfig
from gateway.downstream import ListenerContext, serve_h1, serve_h2
from gateway.errors import GatewayError
from gateway.failover import serve_failover
from gateway.federation_route import FederationRoute
from gateway.h2conn import H2Conn
from gateway.lb.balancer import BalancerSet
from gateway.metrics import GatewayMetrics
from gateway.net import (
    TRANSIENT_ACCEPT_ERRNOS,
    PrefixedStream,
    SocketIO,
    connect,
    connect_tls,
    open_listener,
    set_nodelay,
    tls_stream,
)
from gateway.policy.accesslog import AccessLogConfig
from gateway.proxy import Proxy, Upstreams
from gateway.request_policy import RequestPolicy
from gateway.routes import PickerFactory, RoutingTable
from gateway.sni import NotClientHello, parse_client_hello
from gateway.tcp import pump
from registry.codec import catalog_to_json
from registry.errors import RegistryError
from registry.model import Catalog, Service, parse_host_port

log = logging.getLogger("isthmus.gateway")

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Errors a single connection may end with; none of them concerns any other connection.
CONNECTION_ERRORS = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    OSError,
    ssl.SSLError,
    h2.exceptions.H2Error,
    h11.ProtocolError,
    GatewayError,
    IdentityRejected,
    UnicodeError,
    ValueError,
)


class _Contexts:
    """Fixed server/client contexts built once from an identity and a bundle."""

    def __init__(self, identity: Any, bundle: Any) -> None:
        from certs.tls import client_context, server_context

        self.identity = identity
        self.server = server_context(identity, bundle)
        self.client = client_context(identity, bundle)


class Gateway:
    """The state of one running gateway. Built and driven by `serve_gateway`."""

    def __init__(self, config: GatewayConfig, *, picker_factory: PickerFactory | None = None,
                 rng: random.Random | None = None, authz: AuthzPolicy | None = None,
                 access_log: AccessLogConfig | None = None, tracing: TracingConfig | None = None) -> None:
        self.config = config
        self.contexts = config.contexts or _Contexts(config.identity, config.bundle)
        self.metrics = GatewayMetrics()
        # Endpoint choice: gateway.lb's balancers (locality priority, P2C, outlier detection),
        # kept across catalog reloads; `gateway.picker.RoundRobinPicker` fits the same seam.
        self.picker_factory = picker_factory if picker_factory is not None else BalancerSet()
        self.rng = rng or random.Random()
        # Span export over OTLP (`gateway.otlp`, the optional extra), only with a `[tracing]` table.
        self.spans = None
        if tracing is not None:
            from gateway.otlp import SpanExport

            self.spans = SpanExport(tracing, cluster=config.cluster, registry=self.metrics.registry)
        # Route rules, authorization, faults, trace context and access logs (`gateway.request_policy`).
        self.traffic = RequestPolicy(cluster=config.cluster, trust_domain=config.trust_domain, authz=authz,
                                     access_log=access_log, registry=self.metrics.registry,
                                     picker_factory=self.picker_factory, spans=self.spans)
        self._table: RoutingTable | None = None
        self.stale_reason: str | None = None  # why the catalog source stopped, if it did
        self.ready = False
        self.draining = False
        self.addresses: dict[str, tuple[str, int]] = {}
        self.active = 0
        self._idle = trio.Event()
        self._accept_scopes: list[trio.CancelScope] = []
        self._idle_scopes: set[trio.CancelScope] = set()
        self._h2_conns: set[H2Conn] = set()
        self._tcp_scopes: set[trio.CancelScope] = set()
        self.upstreams: Upstreams | None = None
        self.proxy: Proxy | None = None
        self._nursery: trio.Nursery | None = None
        self._stopped = trio.Event()
        # Federation calls from peers (authority `federation.isthmus`) go to the local control plane.
        self.federation = FederationRoute.of(config, self.metrics)

    # -- catalog ----------------------------------------------------------------------------------

    @property
    def table(self) -> RoutingTable:
        assert self._table is not None
        return self._table

    @property
    def catalog(self) -> Catalog | None:
        return None if self._table is None else self._table.catalog

    def apply_catalog(self, catalog: Catalog) -> None:
        """Build the new routing table first, then swap the one reference (atomic under trio)."""
        policies = self.traffic.balancer_policies(catalog)
        if policies is not None and hasattr(self.picker_factory, "set_policies"):
            self.picker_factory.set_policies(policies)
        table = RoutingTable(
            catalog,
            cluster=self.config.cluster,
            locality=self.config.locality,
            alias_suffixes=self.config.alias_suffixes or (),
            tcp_ports=self.config.tcp_ports,
            picker_factory=self.picker_factory,
        )
        self._table = table
        self.metrics.catalog_revision.set(catalog.revision)

    async def _follow(self, catalogs: AsyncIterator[Catalog]) -> None:
        """Apply each new catalog. If the source itself fails, the last good catalog stays in
        force (static stability) and the gateway says so in /catalog."""
        try:
            async for catalog in catalogs:
                self.apply_catalog(catalog)
                await self.traffic.on_catalog(catalog)
                self.stale_reason = None
        except (GatewayError, RegistryError, OSError) as exc:
            self.stale_reason = str(exc)
            log.warning("catalog source failed, serving revision %s: %s", self.table.revision, exc)

    # -- lifecycle --------------------------------------------------------------------------------

    async def serve(self, source: CatalogSource, *, task_status: trio.TaskStatus[Gateway]) -> None:
        config = self.config
        catalogs = source.__aiter__()
        try:
            first = await catalogs.__anext__()
        except StopAsyncIteration:
            raise GatewayError("the catalog source ended before giving a catalog") from None
        self.apply_catalog(first)
        await self.traffic.on_catalog(first)
        listeners: list[tuple[str, trio.SocketListener, Callable[[SocketIO], Awaitable[None]]]] = []
        outbound_host = config.outbound_address[0]
        wanted = [
            ("eastwest", config.eastwest_address, self._serve_eastwest),
            ("outbound", config.outbound_address, self._serve_outbound),
            ("admin", config.admin_address, self._serve_admin),
        ] + [(f"tcp:{port}", (outbound_host, port), self._tcp_port_handler(port)) for port in sorted(config.tcp_ports)]
        for name, (host, port), handler in wanted:
            try:
                listener = await open_listener(host, port, reuse_port=config.reuse_port)
            except OSError as exc:
                for _, bound, _ in listeners:
                    await bound.aclose()
                field = "gateway.tcp_ports" if name.startswith("tcp:") else f"gateway.{name}"
                raise GatewayError(f"{field}: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
            listeners.append((name, listener, handler))
        for name, listener, _ in listeners:
            sockname = listener.socket.getsockname()
            self.addresses[name] = (sockname[0], sockname[1])
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.upstreams = Upstreams(nursery, contexts=self.contexts, connect_timeout_s=config.connect_timeout_s,
                                       idle_timeout_s=config.idle_timeout_s)
            self.proxy = Proxy(cluster=config.cluster, table=lambda: self.table, upstreams=self.upstreams,
                               metrics=self.metrics, request_timeout_s=config.request_timeout_s,
                               idle_timeout_s=config.idle_timeout_s, rng=self.rng)
            self.proxy.policy = self.traffic
            # Health checks, gateway-pair probes, failover metrics, source address (`gateway.failover`).
            self.failover = await nursery.start(serve_failover, self, source)
            if self.traffic.access_log is not None:
                await nursery.start(self.traffic.access_log.serve)
            if self.spans is not None:
                await nursery.start(self.spans.serve)  # flushes the last spans on exit
            nursery.start_soon(self._follow, catalogs)
            for name, listener, handler in listeners:
                nursery.start_soon(self._accept_loop, name, listener, handler)
            self.ready = True
            task_status.started(self)
            await self._stopped.wait()
            nursery.cancel_scope.cancel()

    async def drain(self, deadline_s: float | None = None) -> None:
        """Stop accepting, let in-flight work finish (up to the deadline), then stop everything."""
        if self.draining:
            await self._stopped.wait()
            return
        self.draining = True
        self.ready = False
        for scope in self._accept_scopes + list(self._idle_scopes):
            scope.cancel()
        for conn in list(self._h2_conns):
            conn.start_draining()
        with trio.move_on_after(self.config.drain_timeout_s if deadline_s is None else deadline_s):
            while self.active:
                self._idle = trio.Event()
                await self._idle.wait()
        if self.upstreams is not None:
            self.upstreams.close_all()
        self._stopped.set()

    def stop(self) -> None:
        self.draining = True
        self._stopped.set()

    # -- accepting --------------------------------------------------------------------------------

    async def _accept_loop(self, name: str, listener: trio.SocketListener,
                           handler: Callable[[SocketIO], Awaitable[None]]) -> None:
        assert self._nursery is not None
        gauge = self.metrics.active_connections.labels(name)
        scope = trio.CancelScope()
        self._accept_scopes.append(scope)
        try:
            with scope:
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError as exc:
                        if exc.errno in TRANSIENT_ACCEPT_ERRNOS:
                            log.warning("%s listener: accept failed (%s); pausing", name, exc.strerror)
                            await trio.sleep(0.1)
                            continue
                        raise
                    self._nursery.start_soon(self._guard, handler, SocketIO(stream), gauge)
        finally:
            with trio.CancelScope(shield=True):
                await listener.aclose()

    async def _guard(self, handler: Callable[[SocketIO], Awaitable[None]], stream: SocketIO,
                     gauge: Any) -> None:
        self.active += 1
        gauge.inc()
        try:
            await handler(stream)
        except* CONNECTION_ERRORS as group:
            log.debug("connection ended: %r", group.exceptions[0])
        finally:
            self.active -= 1
            gauge.dec()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
            if not self.active:
                self._idle.set()

    def _context(self, *, eastwest: bool, source_cluster: str, peer: bytes | None) -> ListenerContext:
        config = self.config
        assert self.proxy is not None
        return ListenerContext(
            proxy=self.proxy,
            eastwest=eastwest,
            source_cluster=source_cluster,
            peer_identity=peer,
            header_timeout_s=config.header_timeout_s,
            idle_timeout_s=config.idle_timeout_s,
            max_header_bytes=config.max_header_bytes,
            max_concurrent_streams=config.max_concurrent_streams,
            is_draining=lambda: self.draining,
            idle_scopes=self._idle_scopes,
            record_bad_request=self._record_bad_request,
        )

    def _record_bad_request(self, source: str, protocol: str, status: int, reason: str) -> None:
        self.metrics.record_request((source, "unknown", "unknown", str(status), protocol, reason), 0.0, 0, 0)

    def _track_h2(self, conn: H2Conn) -> None:
        self._h2_conns.add(conn)
        if self.draining:
            conn.start_draining()

    async def _serve_h2(self, stream: trio.abc.Stream, ctx: ListenerContext, initial: bytes = b"") -> None:
        holder: list[H2Conn] = []

        def on_conn(conn: H2Conn) -> None:
            holder.append(conn)
            self._track_h2(conn)

        try:
            await serve_h2(stream, ctx, initial_data=initial, on_conn=on_conn)
        finally:
            for conn in holder:
                self._h2_conns.discard(conn)

    # -- east-west --------------------------------------------------------------------------------

    async def _serve_eastwest(self, tcp: SocketIO) -> None:
        config = self.config
        set_nodelay(tcp)
        buffer = bytearray()
        hello = None
        with trio.move_on_after(config.handshake_timeout_s) as scope:
            while hello is None:
                data = await tcp.receive_some(16384)
                if not data:
                    return
                buffer += data
                try:
                    hello = parse_client_hello(bytes(buffer))
                except NotClientHello:
                    self.metrics.tls_failures.labels("eastwest", "not-tls").inc()
                    return
        if scope.cancelled_caught:
            self.metrics.tls_failures.labels("eastwest", "handshake-timeout").inc()
            return
        table = self.table
        service = table.service_for_sni(hello.server_name)
        if service is not None and service.gateway_mode == "passthrough":
            if table.catalog.exports.get(service.key) is None:
                self.metrics.tls_failures.labels("eastwest", "not-exported").inc()
                return
            await self._pump_to_local(tcp, table, service, "unknown", initial=bytes(buffer))
            return
        tls = tls_stream(PrefixedStream(tcp, bytes(buffer)), self.contexts.server, server_side=True)
        try:
            with trio.fail_after(config.handshake_timeout_s):
                await tls.do_handshake()
            identity = peer_identity(tls)
        except trio.TooSlowError:
            self.metrics.tls_failures.labels("eastwest", "handshake-timeout").inc()
            return
        except (trio.BrokenResourceError, ssl.SSLError, OSError, IdentityRejected) as exc:
            self.metrics.tls_failures.labels("eastwest", classify_handshake_error(exc)).inc()
            return
        source_cluster = identity.cluster or "unknown"
        try:
            if service is not None and service.protocol == "tcp":
                if not table.exported_to(service.key, source_cluster):
                    return
                await self._pump_to_local(tls, table, service, source_cluster)
                return
            ctx = self._context(eastwest=True, source_cluster=source_cluster, peer=str(identity).encode())
            ctx.proxy = self.federation.bind(str(identity), ctx.proxy)
            if tls.selected_alpn_protocol() == "h2":
                await self._serve_h2(tls, ctx)
            else:
                await serve_h1(tls, ctx)
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(tls)

    async def _pump_to_local(self, downstream: trio.abc.Stream, table: RoutingTable, service: Service,
                             source_cluster: str, *, initial: bytes = b"") -> None:
        picker = table.picker(service.key, local_only=True)
        endpoint = picker.pick(trio.current_time(), self.rng)
        outcome = "connect-failure"
        try:
            upstream = await connect(endpoint.address, endpoint.port, timeout_s=self.config.connect_timeout_s)
            outcome = "success"
        finally:
            picker.report(endpoint.id, outcome, trio.current_time())
        await self._pump(downstream, upstream, source_cluster, endpoint.cluster, service.key, initial)

    async def _pump(self, downstream: trio.abc.Stream, upstream: trio.abc.Stream, source: str, dest: str,
                    service: str, initial: bytes = b"") -> None:
        labels = (source, dest, service)
        self.metrics.tcp_opened.labels(*labels).inc()
        started = trio.current_time()
        counts = None
        try:
            counts = await pump(downstream, upstream, idle_timeout_s=self.config.idle_timeout_s, initial=initial)
            self.metrics.tcp_sent.labels(*labels).inc(counts.sent)
            self.metrics.tcp_received.labels(*labels).inc(counts.received)
        finally:
            self.metrics.tcp_closed.labels(*labels).inc()
            self.traffic.log_tcp(listener="outbound" if source == self.config.cluster else "eastwest",
                                 source_cluster=source, destination_cluster=dest, service=service,
                                 bytes_in=counts.sent if counts else 0, bytes_out=counts.received if counts else 0,
                                 started=started)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(upstream)

    # -- outbound ---------------------------------------------------------------------------------

    async def _serve_outbound(self, tcp: SocketIO) -> None:
        set_nodelay(tcp)
        buffer = b""
        with trio.move_on_after(self.config.idle_timeout_s):
            while len(buffer) < len(H2_PREFACE) and H2_PREFACE.startswith(buffer):
                data = await tcp.receive_some(65536)
                if not data:
                    return
                buffer += data
        if not buffer:
            return
        ctx = self._context(eastwest=False, source_cluster=self.config.cluster, peer=None)
        if buffer.startswith(H2_PREFACE):
            await self._serve_h2(tcp, ctx, initial=buffer)
        else:
            await serve_h1(tcp, ctx, initial_data=buffer)

    def _tcp_port_handler(self, port: int) -> Callable[[SocketIO], Awaitable[None]]:
        async def handler(tcp: SocketIO) -> None:
            await self._serve_tcp_port(tcp, port)

        return handler

    async def _serve_tcp_port(self, tcp: SocketIO, port: int) -> None:
        set_nodelay(tcp)
        table = self.table
        service = table.service_for_port(port)
        picker = table.picker(service.key, local_only=False)
        endpoint = picker.pick(trio.current_time(), self.rng)
        timeout = self.config.connect_timeout_s
        outcome = "connect-failure"
        try:
            if endpoint.cluster == table.cluster:
                upstream: trio.abc.Stream = await connect(endpoint.address, endpoint.port, timeout_s=timeout)
            else:
                host, gw_port = parse_host_port("peer gateway", table.peer_gateway(endpoint.cluster))
                if service.gateway_mode == "passthrough":
                    # The workload's own TLS (with SNI = the service) crosses both gateways untouched.
                    upstream = await connect(host, gw_port, timeout_s=timeout)
                else:
                    upstream = await connect_tls(host, gw_port, self.contexts.client, server_name=service.key,
                                                 expect_cluster=endpoint.cluster, timeout_s=timeout)
            outcome = "success"
        finally:
            picker.report(endpoint.id, outcome, trio.current_time())
        await self._pump(tcp, upstream, table.cluster, endpoint.cluster, service.key)

    # -- admin ------------------------------------------------------------------------------------

    async def _serve_admin(self, stream: SocketIO) -> None:
        await serve_admin_connection(stream, self._admin_routes())

    def _admin_routes(self) -> dict[bytes, AdminRoute]:
        def metrics(headers: Headers) -> tuple[int, bytes, bytes]:
            return 200, *self.metrics.exposition_for(headers)

        def ready(headers: Headers) -> tuple[int, bytes, bytes]:
            ok = self.ready and not self.draining
            return (200 if ok else 503), b"text/plain", b"ready\n" if ok else b"not ready\n"

        def healthz(headers: Headers) -> tuple[int, bytes, bytes]:
            return 200, b"text/plain", b"ok\n"

        def catalog(headers: Headers) -> tuple[int, bytes, bytes]:
            current = self.catalog
            body = {
                "cluster": self.config.cluster,
                "pid": os.getpid(),
                "draining": self.draining,
                "stale": self.stale_reason,
                "catalog": None if current is None else catalog_to_json(current),
            }
            return 200, b"application/json", json_body(body)

        def certs(headers: Headers) -> tuple[int, bytes, bytes]:
            return 200, b"application/json", json_body(certificate_summary(self.contexts.identity))

        return {b"/metrics": metrics, b"/ready": ready, b"/healthz": healthz, b"/catalog": catalog,
                b"/certs": certs}


async def serve_gateway(
    config: GatewayConfig,
    source: CatalogSource,
    *,
    handle_signals: bool = False,
    picker_factory: PickerFactory | None = None,
    authz: AuthzPolicy | None = None,
    access_log: AccessLogConfig | None = None,
    tracing: TracingConfig | None = None,
    task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one gateway until cancelled or drained; `task_status.started(gateway)` once every listener
    is bound and the first catalog is in force. With `handle_signals`, SIGTERM (and SIGINT) drain.
    `authz` (a cluster's `[authz]`) turns on authorization at the east-west listener (default deny
    for unlinked clusters); `access_log` turns on access logs (`gateway.request_policy.traffic_options`);
    `tracing` turns on span export over OTLP (`gateway.config.tracing_options`, `gateway.otlp`)."""
    gateway = Gateway(config, picker_factory=picker_factory, authz=authz, access_log=access_log, tracing=tracing)

    async def stop_when_stopped() -> None:
        # Also ends a gateway still waiting for its first catalog.
        await gateway._stopped.wait()
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        if handle_signals:
            nursery.start_soon(_drain_on_signal, gateway)
        nursery.start_soon(stop_when_stopped)
        await nursery.start(gateway.serve, source)
        task_status.started(gateway)


async def _drain_on_signal(gateway: Gateway) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            log.info("draining (up to %ss)", gateway.config.drain_timeout_s)
            await gateway.drain()
            return
