"""The L7 forwarding core: one request from a downstream (HTTP/1.1 or HTTP/2) to an upstream
(a local endpoint over HTTP/1.1 or h2c, or a remote cluster's gateway over mutual-TLS HTTP/2).

Owns: the protocol-neutral `Request`/`Body`/`Responder` shapes the listeners fill in, the upstream
pools (`Upstreams`: one persistent multiplexed HTTP/2 connection per remote gateway and service,
one per h2c endpoint; idle keep-alive HTTP/1.1 connections per endpoint), the exchange itself
(request body and response streamed concurrently, without buffering whole bodies; trailers;
resets), the mapping of failures to 502/503/504 with `x-isthmus-reason` from `gateway.errors`,
and the per-request metrics. Endpoint choice is the picker's (`gateway.picker` / `gateway.lb`).
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import h2.errors
import h11
import trio

from gateway.errors import (
    Forbidden,
    GatewayError,
    NoHealthyEndpoint,
    UpstreamConnectError,
    UpstreamError,
    UpstreamReset,
    UpstreamTimeout,
)
from gateway.h2conn import ConnectionGone, H2Conn, H2Stream, StreamReset
from gateway.headers import CLUSTER, REASON, response_headers_out, strip_hop_by_hop
from gateway.lb.policy import RetryPolicy, TimeoutPolicy
from gateway.metrics import GatewayMetrics
from gateway.net import SocketIO, connect, connect_tls
from gateway.probes import PROBE_AUTHORITY, serve_probe
from gateway.retrying import ReplayBody, ResponseHeld, open_plan, response_retriable, try_outcome
from gateway.routes import RoutingTable
from registry.model import Endpoint, Service, parse_host_port

READ_SIZE = 65536
STATUS_BYTES = {code: str(code).encode() for code in range(100, 600)}
H2_PROTOCOLS = ("http2", "grpc")


def first_error(group: BaseExceptionGroup) -> BaseException:
    """The first leaf of an exception group that is not a cancellation (nurseries wrap errors)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            exc = first_error(exc)
        if not isinstance(exc, trio.Cancelled):
            return exc
    return group.exceptions[0]


class DownstreamGone(Exception):
    """The downstream client went away (reset, closed, or sent a broken body) mid-exchange."""


class Body(Protocol):
    """A request or response body: chunks in order, then None; `trailers` once finished."""

    end_stream: bool  # True when there is no body at all
    finished: bool  # True once the last chunk has been taken
    trailers: list[tuple[bytes, bytes]] | None

    async def receive(self) -> bytes | None: ...


class Responder(Protocol):
    """Where the response goes (the downstream side of the exchange)."""

    started: bool

    async def start(self, status: int, headers: list[tuple[bytes, bytes]], *, end_stream: bool,
                    body_ready: bool = False) -> None:
        """Send the response head. `body_ready`: the caller sends the first body chunk next, with no
        wait in between, so the head may go out with it (one write instead of two)."""

    async def data(self, chunk: bytes, *, end_stream: bool) -> None: ...

    async def trailers(self, headers: list[tuple[bytes, bytes]]) -> None: ...

    async def end(self) -> None: ...

    async def abort(self) -> None: ...


@attrs.define(slots=True)
class Request:
    method: bytes
    scheme: bytes
    authority: bytes
    path: bytes
    headers: list[tuple[bytes, bytes]]  # end-to-end headers, lower-case names
    body: Body
    protocol: str  # Istio's request_protocol label: http or grpc
    source_cluster: str


class H2Body:
    """A body arriving on an HTTP/2 stream; a downstream reset becomes `DownstreamGone`."""

    __slots__ = ("stream", "end_stream")

    def __init__(self, stream: H2Stream, end_stream: bool) -> None:
        self.stream = stream
        self.end_stream = end_stream

    @property
    def finished(self) -> bool:
        return self.stream.finished

    @property
    def trailers(self) -> list[tuple[bytes, bytes]] | None:
        return self.stream.trailers

    async def receive(self) -> bytes | None:
        try:
            return await self.stream.receive_chunk()
        except StreamReset:
            raise DownstreamGone("downstream stream reset") from None


@attrs.define
class Counts:
    request_bytes: int = 0
    response_bytes: int = 0
    request_sent: bool = False  # the whole request (body included) has gone upstream
    destination_cluster: str = "unknown"
    # Set by the attempt loop per try: the wait for response headers (None: `request_timeout_s`),
    # and a callback told each response head; True means "drop this response, a retry follows".
    try_timeout_s: float | None = None
    on_head: Callable[[int, str], bool] | None = None
    # True when the attempt loop's own scope already ends the wait for the head at the try's
    # deadline (a body-less request: sent at once, so "from the end of the body" is "from the start").
    head_deadline_set: bool = False
    # The attempt loop's scope for the try: its deadline ends the wait for the head; once the head is
    # here the relay moves it, to the HTTP/2 response body's idle timeout (one scope per try rather
    # than one more per response; `body_idle_s` is set then) or away (HTTP/1.1 times each read).
    try_scope: trio.CancelScope | None = None
    body_idle_s: float | None = None


def error_body(status: int, reason: str) -> bytes:
    return f"{status} {reason}\n".encode()


# -- upstream connections -------------------------------------------------------------------------


class H1Upstream:
    """One HTTP/1.1 connection to an endpoint, reusable while both sides keep it alive."""

    __slots__ = ("stream", "conn", "key", "reused")

    def __init__(self, stream: SocketIO, key: tuple[str, int]) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)
        self.key = key
        self.reused = False

    async def next_event(self, timeout_s: float, what: str) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            with trio.move_on_after(timeout_s) as scope:
                data = await self.stream.receive_some(READ_SIZE)
            if scope.cancelled_caught:
                raise UpstreamTimeout(f"{what} from {self.key[0]}:{self.key[1]} timed out after {timeout_s}s")
            self.conn.receive_data(data)


class Upstreams:
    """Upstream connection pools. Connection tasks run in `nursery` (the gateway's own)."""

    def __init__(self, nursery: trio.Nursery, *, contexts: Any, connect_timeout_s: float,
                 idle_timeout_s: float, max_idle_h1: int = 32) -> None:
        self.nursery = nursery
        self.contexts = contexts
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_idle_h1 = max_idle_h1
        # The local address outgoing connections bind (`gateway.net.source_address_of`); None: any.
        self.source_address: str | None = None
        self.h2: dict[tuple[str, int, str | None], H2Conn] = {}
        self._locks: dict[tuple[str, int, str | None], trio.Lock] = {}
        self.h1_idle: dict[tuple[str, int], list[H1Upstream]] = {}

    def __repr__(self) -> str:
        return f"<Upstreams h2={sorted(self.h2)} h1_idle={ {k: len(v) for k, v in self.h1_idle.items()} }>"

    async def h2_conn(self, host: str, port: int, *, tls_sni: str | None = None,
                      expect_cluster: str | None = None) -> H2Conn:
        key = (host, port, tls_sni)
        conn = self.h2.get(key)
        if conn is not None and conn.usable:
            return conn
        lock = self._locks.setdefault(key, trio.Lock())
        async with lock:
            conn = self.h2.get(key)
            if conn is not None and conn.usable:
                return conn
            if tls_sni is None:
                stream: trio.abc.Stream = await connect(host, port, timeout_s=self.connect_timeout_s,
                                                        local_address=self.source_address)
            else:
                stream = await connect_tls(host, port, self.contexts.client, server_name=tls_sni,
                                           expect_cluster=expect_cluster, timeout_s=self.connect_timeout_s,
                                           local_address=self.source_address)
                if stream.selected_alpn_protocol() != "h2":
                    await trio.aclose_forcefully(stream)
                    raise UpstreamConnectError(f"peer gateway {host}:{port} did not agree to HTTP/2")
            conn = H2Conn(stream, client_side=True, idle_timeout_s=self.idle_timeout_s)
            await self.nursery.start(self._run_h2, key, conn)
            self.h2[key] = conn
            return conn

    async def _run_h2(self, key: tuple[str, int, str | None], conn: H2Conn,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await conn.run(task_status=task_status)
        finally:
            if self.h2.get(key) is conn:
                del self.h2[key]

    async def h1_acquire(self, host: str, port: int) -> H1Upstream:
        idle = self.h1_idle.get((host, port))
        if idle:
            up = idle.pop()
            up.reused = True
            return up
        stream = await connect(host, port, timeout_s=self.connect_timeout_s, local_address=self.source_address)
        return H1Upstream(stream, (host, port))

    def h1_release(self, up: H1Upstream) -> bool:
        if up.conn.our_state is h11.DONE and up.conn.their_state is h11.DONE:
            up.conn.start_next_cycle()
            idle = self.h1_idle.setdefault(up.key, [])
            if len(idle) < self.max_idle_h1:
                idle.append(up)
                return True
        return False

    def close_all(self) -> None:
        for conn in list(self.h2.values()):
            conn.start_draining()
        for idle in self.h1_idle.values():
            for up in idle:
                up.stream.socket.close()
        self.h1_idle.clear()


# -- the exchange -------------------------------------------------------------------------------


class Proxy:
    """Forwards requests for one gateway. `table()` returns the routing table in force."""

    def __init__(self, *, cluster: str, table: Callable[[], RoutingTable], upstreams: Upstreams,
                 metrics: GatewayMetrics, request_timeout_s: float, idle_timeout_s: float,
                 rng: random.Random | None = None) -> None:
        self.cluster = cluster
        self.cluster_bytes = cluster.encode()
        self.table = table
        self.upstreams = upstreams
        self.metrics = metrics
        self.request_timeout_s = request_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.rng = rng or random.Random()
        self.in_flight = 0
        # Answers gateway-pair probes on the east-west listener; set by `gateway.failover`.
        self.probe_answer: Callable[[str | None], bytes] | None = None
        # Route rules, authorization, faults, trace context, access log (`gateway.request_policy`).
        self.policy: Any = None

    async def handle(self, req: Request, responder: Responder, *, eastwest: bool) -> None:
        """Serve one request end to end; never raises for upstream or downstream failures."""
        if eastwest and self.probe_answer is not None and req.authority == PROBE_AUTHORITY:
            await serve_probe(self.probe_answer, req, responder)  # a peer gateway's probe (`gateway.probes`)
            return
        table = self.table()
        start = trio.current_time()
        counts = Counts()
        service_key = "unknown"
        status = 0
        reason = ""
        self.in_flight += 1
        state = None if self.policy is None else self.policy.start(req, responder, eastwest=eastwest)
        if state is not None:
            responder = state.responder
        try:
            service = table.service_for_authority(req.authority.decode("latin-1"))
            service_key = service.key
            if state is not None:
                picker = state.route(req, service, table)
                await state.apply_fault()
                retry, timeout = state.route_policies()
                status, reason = await self._attempts(table, service, req, responder, counts, eastwest=eastwest,
                                                      retry=retry, timeout=timeout, picker=picker,
                                                      on_pick=state.on_pick)
            else:
                if eastwest and not table.exported_to(service.key, req.source_cluster):
                    raise Forbidden(f"{service.key} is not exported to cluster {req.source_cluster!r}")
                status, reason = await self._attempts(table, service, req, responder, counts, eastwest=eastwest)
        except GatewayError as exc:
            status, reason = exc.status, exc.reason
            await self._fail(responder, status, reason)
            if not responder.started:
                status = 0
        except DownstreamGone:
            status, reason = 0, "downstream-reset"
            await responder.abort()
        except (StreamReset, h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            # An upstream connection failing in a way the exchange did not classify.
            status, reason = UpstreamReset.status, UpstreamReset.reason
            await self._fail(responder, status, reason)
            if not responder.started:
                status = 0
        finally:
            self.in_flight -= 1
            self.metrics.record_request(
                (req.source_cluster, counts.destination_cluster, service_key, str(status), req.protocol, reason),
                trio.current_time() - start,
                counts.request_bytes,
                counts.response_bytes,
            )
            if state is not None:
                state.finish(status, reason, counts, counts.destination_cluster)

    async def _attempts(self, table: RoutingTable, service: Service, req: Request, responder: Responder,
                        counts: Counts, *, eastwest: bool, retry: RetryPolicy | None = None,
                        timeout: TimeoutPolicy | None = None,  # noqa: ASYNC109
                        picker: Any = None,
                        on_pick: Callable[[Request, Endpoint], None] | None = None) -> tuple[int, str]:
        """The tries of one request through the balancer's `RequestPlan` (`gateway.lb`).

        A failed try (connect failure, reset, per-try timeout, a retriable response head: see
        `gateway.retrying.response_retriable`) is retried on another host, preferably in another
        locality, while the plan allows it (attempts, idempotent method, deadline, retry budget), the
        response has not started downstream, and the request body is replayable (nothing sent yet,
        or at most `gateway.retrying.MAX_REPLAY_BYTES` kept in memory; gRPC: nothing sent). A request
        without a body has its whole try, connect included, bounded by the per-try timeout until
        its response head arrives. `retry`/`timeout` are a route's own settings (None: the
        service's policy). On the east-west listener only connect failures are retried.
        """
        if picker is None:
            picker = table.picker(service.key, local_only=eastwest)
        plan = open_plan(picker, trio.current_time(), req.method.decode("latin-1"), retry=retry,
                         timeout=timeout, eastwest=eastwest)
        retry_on = plan.state.policy.retry_on
        replay = None if req.body.end_stream else ReplayBody(req.body)
        grpc = req.protocol == "grpc"
        last_error: BaseException | None = None

        def replayable() -> bool:
            if counts.request_bytes == 0:
                return True
            return not grpc and (replay is None or replay.replayable)

        try:
            while True:
                try:
                    endpoint = plan.pick(trio.current_time(), self.rng)
                except NoHealthyEndpoint:
                    if last_error is not None:
                        raise last_error from None
                    raise
                counts.destination_cluster = endpoint.cluster
                if on_pick is not None:
                    on_pick(req, endpoint)  # the route's request header edits for this destination
                counts.request_bytes = counts.response_bytes = 0
                counts.request_sent = False
                now = trio.current_time()
                deadline = plan.try_deadline(now)
                counts.try_timeout_s = None if deadline is None else max(0.001, deadline - now)
                via_gateway = endpoint.cluster != table.cluster
                counts.head_deadline_set = deadline is not None and replay is None
                scope = trio.CancelScope(deadline=deadline if counts.head_deadline_set else math.inf)
                counts.try_scope, counts.body_idle_s = scope, None
                finished: list[bool] = []

                def on_head(status: int, reason: str, via_gateway: bool = via_gateway,
                            scope: trio.CancelScope = scope, finished: list[bool] = finished) -> bool:
                    if not response_retriable(status, reason, via_gateway=via_gateway, retry_on=retry_on):
                        return False
                    if responder.started or not replayable():
                        return False
                    finished.append(True)
                    return plan.finish_try(status, trio.current_time(), status=status).retry

                counts.on_head = on_head
                try_req = req if replay is None else attrs.evolve(req, body=replay.view())
                try:
                    with scope:
                        status, reason = await self._forward(table, service, endpoint, try_req, responder, counts)
                    if scope.cancelled_caught:
                        if counts.body_idle_s is not None:
                            raise UpstreamTimeout(f"response body idle for {counts.body_idle_s:g}s")
                        raise UpstreamTimeout(f"no response from {endpoint.id} within {counts.try_timeout_s:.3g}s")
                except ResponseHeld as held:
                    self.metrics.record_retry(service.key, held.reason or str(held.status))
                    last_error = UpstreamError(f"{held.status} {held.reason} from {endpoint.id}")
                    last_error.status, last_error.reason = held.status, held.reason or "upstream"
                    continue
                except DownstreamGone:
                    raise
                except (GatewayError, StreamReset, h11.ProtocolError, trio.BrokenResourceError,
                        trio.ClosedResourceError) as exc:
                    outcome = try_outcome(exc)
                    decision = plan.finish_try(outcome, trio.current_time())
                    if not decision.retry or responder.started or not replayable():
                        if isinstance(exc, UpstreamTimeout):
                            self.metrics.record_timeout(service.key)  # the request ends with 504
                        raise
                    self.metrics.record_retry(service.key, str(outcome))
                    last_error = exc
                    continue
                if not finished:
                    plan.finish_try(status, trio.current_time(), status=status)
                return status, reason
        finally:
            plan.close(trio.current_time())
            # `on_head` closes over `counts` (through `replayable`): without this the request's
            # objects form a cycle that only the cyclic garbage collector frees.
            counts.on_head = counts.try_scope = None

    async def _fail(self, responder: Responder, status: int, reason: str) -> None:
        if responder.started:
            await responder.abort()
            return
        body = error_body(status, reason)
        headers = [
            (b"content-type", b"text/plain"),
            (b"content-length", str(len(body)).encode()),
            (REASON, reason.encode()),
            (CLUSTER, self.cluster_bytes),
        ]
        try:
            await responder.start(status, headers, end_stream=False, body_ready=True)
            await responder.data(body, end_stream=True)
        except DownstreamGone:
            await responder.abort()

    async def _forward(self, table: RoutingTable, service: Service, endpoint: Endpoint, req: Request,
                       responder: Responder, counts: Counts) -> tuple[int, str]:
        if endpoint.cluster == table.cluster:
            if service.protocol in H2_PROTOCOLS:
                conn = await self.upstreams.h2_conn(endpoint.address, endpoint.port)
                return await self._exchange_h2(conn, b"http", req, responder, counts, endpoint.cluster)
            return await self._exchange_h1(endpoint, req, responder, counts)
        host, port = parse_host_port("peer gateway", table.peer_gateway(endpoint.cluster))
        conn = await self.upstreams.h2_conn(host, port, tls_sni=service.key, expect_cluster=endpoint.cluster)
        return await self._exchange_h2(conn, b"https", req, responder, counts, endpoint.cluster)

    # HTTP/2 upstream ------------------------------------------------------------------------------

    async def _exchange_h2(self, conn: H2Conn, scheme: bytes, req: Request, responder: Responder,
                           counts: Counts, cluster: str) -> tuple[int, str]:
        headers = [(b":method", req.method), (b":scheme", scheme), (b":authority", req.authority),
                   (b":path", req.path)]
        headers += req.headers
        no_body = req.body.end_stream
        counts.request_sent = no_body
        try:
            stream = await conn.open_stream(headers, end_stream=no_body)
        except ConnectionGone as exc:
            raise UpstreamConnectError(f"upstream connection unusable: {exc}") from None
        try:
            if no_body:
                # Nothing to pump upstream: no nursery (a nursery per request cost ~3 % of CPU).
                return await self._relay_h2_response(stream, responder, counts, cluster)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump_to_h2, req.body, conn, stream, counts)
                    result = await self._relay_h2_response(stream, responder, counts, cluster)
                    nursery.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                raise first_error(group) from None
            return result
        finally:
            conn.forget(stream.id)

    async def _response_head(self, receive: Callable[[], Any], counts: Counts) -> Any:
        """The response head; the try's timeout (`request_timeout_s` unless the attempt loop set a
        per-try one) counts from the end of the request body (a streaming request may legitimately
        take longer to send than that)."""
        if counts.head_deadline_set and counts.request_sent:
            return await receive()  # one cancel scope per try is enough (see `Counts`)
        timeout_s = self.request_timeout_s if counts.try_timeout_s is None else counts.try_timeout_s
        while True:
            with trio.move_on_after(timeout_s):
                return await receive()
            if counts.request_sent:
                raise UpstreamTimeout(f"no response within {timeout_s:.3g}s")

    async def _pump_to_h2(self, body: Body, conn: H2Conn, stream: H2Stream, counts: Counts) -> None:
        try:
            while True:
                chunk = await body.receive()
                if chunk is None:
                    break
                counts.request_bytes += len(chunk)
                last = body.finished and body.trailers is None
                await conn.send_data(stream.id, chunk, end_stream=last)
                if last:
                    counts.request_sent = True
                    return
            if body.trailers:
                conn.send_headers(stream.id, body.trailers, end_stream=True)
            else:
                await conn.send_data(stream.id, b"", end_stream=True)
            counts.request_sent = True
        except StreamReset:
            # The upstream ended or reset its stream; the response side reports what happened.
            return
        except DownstreamGone:
            conn.reset(stream.id, h2.errors.ErrorCodes.CANCEL)
            raise

    async def _relay_h2_response(self, stream: H2Stream, responder: Responder, counts: Counts,
                                 cluster: str) -> tuple[int, str]:
        try:
            raw = await self._response_head(stream.receive_headers, counts)
            status = 502
            headers: list[tuple[bytes, bytes]] = []
            reason = ""
            for name, value in raw:
                if name == b":status":
                    status = int(value)
                elif name == REASON:
                    reason = value.decode("latin-1")
                    headers.append((name, value))
                elif name[:1] != b":":
                    headers.append((name, value))
            if counts.on_head is not None and counts.on_head(status, reason):
                raise ResponseHeld(status, reason)
            # The per-try timeout covered the wait for the head. From here the try's scope
            # (`Counts.try_scope`, the attempt loop's) bounds the body, its deadline pushed on by each
            # chunk (idle timeout), moved only when it would move by more than 1 % of the timeout:
            # setting a deadline costs more than relaying a small chunk (so it is set once here, not
            # lifted first). Its expiry ends the try with "response body idle".
            idle_s = self.idle_timeout_s
            slack_s = min(1.0, idle_s / 100)
            scope = counts.try_scope
            assert scope is not None, "set by the attempt loop, the only way here"
            counts.body_idle_s = idle_s
            scope.deadline = trio.current_time() + idle_s
            headers = response_headers_out(headers, cluster.encode())
            if stream.finished and not stream.trailers:
                await responder.start(status, headers, end_stream=True)
                return status, reason
            # A chunk already here is relayed below without a wait: the head goes out with it.
            await responder.start(status, headers, end_stream=False, body_ready=bool(stream.chunks))
            while True:
                deadline = trio.current_time() + idle_s
                if deadline - scope.deadline > slack_s:
                    scope.deadline = deadline
                chunk = await stream.receive_available()  # what arrived in several frames goes on as one
                if chunk is None:
                    break
                counts.response_bytes += len(chunk)
                last = stream.finished and not stream.trailers
                await responder.data(chunk, end_stream=last)
                if last:
                    return status, reason
            if stream.trailers:
                await responder.trailers(strip_hop_by_hop(stream.trailers, keep_te_trailers=False))
            else:
                await responder.end()
            return status, reason
        except StreamReset as exc:
            if isinstance(exc, ConnectionGone) and not responder.started and not counts.request_bytes \
                    and exc.error_code == h2.errors.ErrorCodes.REFUSED_STREAM:
                raise UpstreamConnectError(str(exc)) from None
            raise UpstreamReset(f"upstream reset the stream: {exc}") from None

    # HTTP/1.1 upstream ---------------------------------------------------------------------------

    async def _exchange_h1(self, endpoint: Endpoint, req: Request, responder: Responder,
                           counts: Counts) -> tuple[int, str]:
        headers = [(b"host", req.authority)]
        has_length = False
        for name, value in req.headers:
            if name == b"te" or name == b"expect":
                continue
            if name == b"content-length":
                has_length = True
            headers.append((name, value))
        has_body = not req.body.end_stream
        if has_body and not has_length:
            headers.append((b"transfer-encoding", b"chunked"))
        request = h11.Request(method=req.method, target=req.path, headers=headers)
        for attempt in range(2):
            up = await self.upstreams.h1_acquire(endpoint.address, endpoint.port)
            counts.request_sent = not has_body
            try:
                try:
                    result = await self._h1_attempt(up, request, has_body, req, responder, counts, endpoint)
                except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError) as exc:
                    # A kept-alive connection the endpoint closed meanwhile: retry once on a new one.
                    if up.reused and attempt == 0 and not has_body and not responder.started:
                        continue
                    if isinstance(exc, h11.RemoteProtocolError):
                        raise UpstreamReset(f"bad response from {endpoint.id}: {exc}") from None
                    raise UpstreamReset(f"connection to {endpoint.id} broke") from None
                if result is None:  # closed before answering: retry on a new connection
                    continue
                if self.upstreams.h1_release(up):
                    up = None  # type: ignore[assignment]
                return result
            finally:
                if up is not None:
                    await trio.aclose_forcefully(up.stream)
        raise UpstreamReset(f"{endpoint.id} closed the connection without a response")

    async def _h1_attempt(self, up: H1Upstream, request: h11.Request, has_body: bool, req: Request,
                          responder: Responder, counts: Counts, endpoint: Endpoint) -> tuple[int, str] | None:
        """One try on one connection; None when a reused connection turned out to be closed."""
        try:
            async with trio.open_nursery() as nursery:
                # The body goes up while the response comes down: an endpoint may answer (or
                # stream its answer) before it has read the whole request.
                data = up.conn.send(request)
                if not has_body:
                    data += up.conn.send(h11.EndOfMessage())
                await up.stream.send_all(data)
                if has_body:
                    nursery.start_soon(self._pump_to_h1, req.body, up, counts)
                next_head = functools.partial(up.next_event, math.inf, "response")
                response = await self._response_head(next_head, counts)
                while isinstance(response, h11.InformationalResponse):
                    response = await self._response_head(next_head, counts)
                if isinstance(response, h11.ConnectionClosed):
                    if up.reused and not has_body:
                        nursery.cancel_scope.cancel()
                        return None
                    raise UpstreamReset(f"{endpoint.id} closed the connection without a response")
                result = await self._relay_h1_response(up, response, responder, counts, endpoint)
                nursery.cancel_scope.cancel()
            return result
        except BaseExceptionGroup as group:
            raise first_error(group) from None

    async def _pump_to_h1(self, body: Body, up: H1Upstream, counts: Counts) -> None:
        try:
            while True:
                chunk = await body.receive()
                if chunk is None:
                    break
                counts.request_bytes += len(chunk)
                await up.stream.send_all(up.conn.send(h11.Data(data=chunk)))
            await up.stream.send_all(up.conn.send(h11.EndOfMessage()))
            counts.request_sent = True
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            # The endpoint stopped reading (it may have answered already); the response side reports.
            return

    async def _relay_h1_response(self, up: H1Upstream, response: h11.Response, responder: Responder,
                                 counts: Counts, endpoint: Endpoint) -> tuple[int, str]:
        status = response.status_code
        raw = [(n, v) for n, v in response.headers]
        reason = next((v.decode("latin-1") for n, v in raw if n == REASON), "")
        if counts.on_head is not None and counts.on_head(status, reason):
            raise ResponseHeld(status, reason)
        if counts.try_scope is not None:
            counts.try_scope.deadline = math.inf  # the per-try timeout covers the wait for the head only
        headers = response_headers_out(raw, endpoint.cluster.encode())
        try:
            event = up.conn.next_event()  # what came with the head
            if event is h11.NEED_DATA:  # no body yet: the head goes on now, not when the body starts
                await responder.start(status, headers, end_stream=False)
                event = await up.next_event(self.idle_timeout_s, "response body")
            elif isinstance(event, h11.EndOfMessage) and not event.headers:
                await responder.start(status, headers, end_stream=True)
                return status, reason
            else:
                await responder.start(status, headers, end_stream=False, body_ready=isinstance(event, h11.Data))
            while isinstance(event, h11.Data):
                counts.response_bytes += len(event.data)
                await responder.data(bytes(event.data), end_stream=False)
                event = await up.next_event(self.idle_timeout_s, "response body")
            if isinstance(event, h11.EndOfMessage):
                if event.headers:
                    await responder.trailers(list(event.headers))
                else:
                    await responder.end()
                return status, reason
            raise UpstreamReset(f"{endpoint.id} closed the connection mid-response")
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError) as exc:
            raise UpstreamReset(f"{endpoint.id}: {exc or 'connection broke'}") from None
