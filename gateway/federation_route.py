"""Federation calls through the east-west gateway: one crossing per cluster.

Owns the reserved authority `federation.isthmus` on the east-west listener. A peer's control plane
dials this gateway with mutual TLS (SNI and `Host`/`:authority` `federation.isthmus`); the listener
has verified its SPIFFE ID during the handshake. `FederationRoute.bind(identity, proxy)` wraps the
listener's `Proxy` for that one connection: a request for the reserved authority whose path is a
federation call (`/v1/federation/<name>`) is forwarded over loopback HTTP/1.1 to this cluster's
control-plane API (`GatewayConfig.control_api`) with

    x-isthmus-peer-identity: <the SPIFFE ID verified on this connection>
    x-isthmus-forward-secret: <the secret in GatewayConfig.forward_secret_file>

(any such header, or `x-forwarded-client-cert`, sent by the caller is dropped first), and the
response is streamed back chunk by chunk (import watches are long-lived newline-delimited JSON:
nothing is buffered). Any other path on that authority is 404 `federation-path-unknown`; every
other authority goes to the proxy unchanged. Forwarded calls are counted in the gateway's request
metrics with `destination_service="federation.isthmus"`.

Also owns `PeerTrustContexts`: the listener's TLS contexts trusting the local trust bundle plus
the bundle of every linked peer in the catalog in force (clusters may have different roots), and
`trusting_peers(source, contexts)`, a catalog source that keeps them in step with its catalogs.

Imports `gateway` modules and `certs` only; never `federation`.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import h11
import trio

from certs.tls import client_context, server_context
from gateway.errors import GatewayError, UpstreamConnectError, UpstreamReset, UpstreamTimeout
from gateway.headers import CLUSTER, PEER_IDENTITY, REASON, response_headers_out
from gateway.metrics import GatewayMetrics
from gateway.net import SocketIO, connect
from gateway.proxy import DownstreamGone, Request, Responder, error_body
from gateway.routes import host_of
from registry.model import Catalog, Peer, parse_host_port

FEDERATION_AUTHORITY = "federation.isthmus"
# The control plane's federation calls (`federation.api`): one path segment, an optional query.
FEDERATION_PATH = re.compile(rb"/v1/federation/[A-Za-z0-9_-]+(\?[^#]*)?")
FORWARD_SECRET = b"x-isthmus-forward-secret"
XFCC = b"x-forwarded-client-cert"
# Identity headers only this gateway may set: whatever the caller sent under these names is dropped.
STRIPPED = frozenset({PEER_IDENTITY, FORWARD_SECRET, XFCC, b"content-length", b"host"})
# Federation request bodies are small JSON documents (a peering redeem); larger ones are refused.
MAX_BODY_BYTES = 1024 * 1024
READ_SIZE = 65536


class FederationRefused(GatewayError):
    """A request for the federation authority that is not forwarded (the status says why)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def is_federation_authority(authority: bytes) -> bool:
    return host_of(authority.decode("latin-1")) == FEDERATION_AUTHORITY


def forwarded_headers(headers: list[tuple[bytes, bytes]], *, identity: bytes, secret: bytes, host: bytes,
                      body_length: int | None) -> list[tuple[bytes, bytes]]:
    """The headers sent to the control plane: the caller's, minus identity claims, plus ours."""
    out = [(b"host", host)]
    out += [(name, value) for name, value in headers if name not in STRIPPED]
    out.append((PEER_IDENTITY, identity))
    out.append((FORWARD_SECRET, secret))
    if body_length is not None:
        out.append((b"content-length", str(body_length).encode()))
    out.append((b"connection", b"close"))
    return out


class FederationRoute:
    """Forwards federation calls arriving on the east-west listener to the local control plane."""

    def __init__(self, *, cluster: str, control_api: str | None, forward_secret_file: Path | None,
                 metrics: GatewayMetrics, connect_timeout_s: float, request_timeout_s: float,
                 idle_timeout_s: float) -> None:
        self.cluster = cluster
        self.cluster_bytes = cluster.encode()
        self.control_api = control_api
        self.forward_secret_file = forward_secret_file
        self.metrics = metrics
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._secret: bytes | None = None

    @classmethod
    def of(cls, config: Any, metrics: GatewayMetrics) -> FederationRoute:
        return cls(cluster=config.cluster, control_api=config.control_api,
                   forward_secret_file=config.forward_secret_file, metrics=metrics,
                   connect_timeout_s=config.connect_timeout_s, request_timeout_s=config.request_timeout_s,
                   idle_timeout_s=config.idle_timeout_s)  # fmt: skip

    def bind(self, identity: str, proxy: Any) -> PeerProxy:
        """The proxy one east-west connection uses, knowing the identity verified on it."""
        return PeerProxy(self, identity.encode(), proxy)

    def secret(self) -> bytes | None:
        """The forward secret (the control plane writes it on its first start; read until found)."""
        if self._secret is None and self.forward_secret_file is not None:
            try:
                value = self.forward_secret_file.read_bytes().strip()
            except OSError:
                return None
            self._secret = value or None
        return self._secret

    async def forward(self, req: Request, responder: Responder, identity: bytes) -> None:
        """Serve one federation call; never raises for upstream or downstream failures."""
        start = trio.current_time()
        status, reason = 0, ""
        sizes = [0, 0]
        try:
            status, reason = await self._exchange(req, responder, identity, sizes)
        except GatewayError as exc:
            status, reason = exc.status, exc.reason
            if exc.reason == UpstreamConnectError.reason:
                reason = "control-plane-unavailable"
            await self._fail(responder, status, reason)
        except DownstreamGone:
            status, reason = 0, "downstream-reset"
            await responder.abort()
        finally:
            self.metrics.record_request(
                (req.source_cluster, self.cluster, FEDERATION_AUTHORITY, str(status), req.protocol, reason),
                trio.current_time() - start, sizes[0], sizes[1],
            )  # fmt: skip

    async def _exchange(self, req: Request, responder: Responder, identity: bytes,
                        sizes: list[int]) -> tuple[int, str]:
        if not FEDERATION_PATH.fullmatch(req.path):
            raise FederationRefused(404, "federation-path-unknown", "not a federation call")
        if self.control_api is None:
            raise FederationRefused(404, "federation-not-served", "this gateway has no control plane")
        secret = self.secret()
        if secret is None:
            raise FederationRefused(503, "forward-secret-missing", f"cannot read {self.forward_secret_file}")
        body = b""
        while True:
            chunk = await req.body.receive()
            if chunk is None:
                break
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise FederationRefused(413, "federation-body-too-large", "request body too large")
        sizes[0] = len(body)
        host, port = parse_host_port("gateway.control_api", self.control_api)
        headers = forwarded_headers(req.headers, identity=identity, secret=secret, host=self.control_api.encode(),
                                    body_length=len(body) if body or req.method in (b"POST", b"PUT") else None)
        upstream = await connect(host, port, timeout_s=self.connect_timeout_s)
        try:
            conn = h11.Connection(h11.CLIENT)
            data = conn.send(h11.Request(method=req.method, target=req.path, headers=headers))
            if body:
                data += conn.send(h11.Data(data=body))
            data += conn.send(h11.EndOfMessage())
            try:
                await upstream.send_all(data)
                response = await _next_event(conn, upstream, self.request_timeout_s, "the control plane's answer")
                while isinstance(response, h11.InformationalResponse):
                    response = await _next_event(conn, upstream, self.request_timeout_s, "the control plane's answer")
                if not isinstance(response, h11.Response):
                    raise UpstreamReset("the control plane closed the connection without a response")
                return await self._relay(conn, upstream, response, responder, sizes)
            except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as exc:
                raise UpstreamReset(f"control plane: {exc or 'connection broke'}") from None
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(upstream)

    async def _relay(self, conn: h11.Connection, upstream: SocketIO, response: h11.Response,
                     responder: Responder, sizes: list[int]) -> tuple[int, str]:
        status = response.status_code
        if status == 403:
            self._secret = None  # the control plane may have a new secret: read the file again next time
        raw = [(name, value) for name, value in response.headers]
        reason = next((value.decode("latin-1") for name, value in raw if name == REASON), "")
        headers = response_headers_out(raw, self.cluster_bytes)
        event = await _next_event(conn, upstream, self.idle_timeout_s, "the response body")
        if isinstance(event, h11.EndOfMessage):
            await responder.start(status, headers, end_stream=True)
            return status, reason
        await responder.start(status, headers, end_stream=False, body_ready=isinstance(event, h11.Data))
        while isinstance(event, h11.Data):
            sizes[1] += len(event.data)
            await responder.data(bytes(event.data), end_stream=False)
            event = await _next_event(conn, upstream, self.idle_timeout_s, "the response body")
        if not isinstance(event, h11.EndOfMessage):
            raise UpstreamReset("the control plane closed the connection mid-response")
        await responder.end()
        return status, reason

    async def _fail(self, responder: Responder, status: int, reason: str) -> None:
        if responder.started:
            await responder.abort()
            return
        body = error_body(status, reason)
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()),
                   (REASON, reason.encode()), (CLUSTER, self.cluster_bytes)]  # fmt: skip
        try:
            await responder.start(status, headers, end_stream=False, body_ready=True)
            await responder.data(body, end_stream=True)
        except DownstreamGone:
            await responder.abort()


async def _next_event(conn: h11.Connection, stream: SocketIO, timeout_s: float, what: str) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        with trio.move_on_after(timeout_s) as scope:
            data = await stream.receive_some(READ_SIZE)
        if scope.cancelled_caught:
            raise UpstreamTimeout(f"{what} timed out after {timeout_s}s")
        conn.receive_data(data)


class PeerProxy:
    """The east-west listener's proxy for one connection: the federation authority goes to the
    control plane with the connection's verified identity, everything else to the proxy."""

    __slots__ = ("_route", "_identity", "_proxy")

    def __init__(self, route: FederationRoute, identity: bytes, proxy: Any) -> None:
        self._route = route
        self._identity = identity
        self._proxy = proxy

    def __getattr__(self, name: str) -> Any:
        return getattr(self._proxy, name)

    async def handle(self, req: Request, responder: Responder, *, eastwest: bool) -> None:
        if eastwest and is_federation_authority(req.authority):
            await self._route.forward(req, responder, self._identity)
        else:
            await self._proxy.handle(req, responder, eastwest=eastwest)


class PeerTrustContexts:
    """Server and client contexts trusting the local bundle and every linked peer's bundle.

    Has the `.server`/`.client` attributes `GatewayConfig.contexts` expects; `trust_peers`
    rebuilds both (then swaps them in one step) when the set of peer bundles changes.
    """

    def __init__(self, identity: Any, bundle: Any) -> None:
        self.identity = identity
        self.bundle = bundle
        self.peer_bundles = ""
        self.server: ssl.SSLContext
        self.client: ssl.SSLContext
        self.server, self.client = self._build("")

    def _build(self, extra: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        server = server_context(self.identity, self.bundle)
        client = client_context(self.identity, self.bundle)
        if extra:
            server.load_verify_locations(cadata=extra)
            client.load_verify_locations(cadata=extra)
        return server, client

    def reload_identity(self, identity: Any, bundle: Any) -> None:
        """Use a reissued identity (and bundle) for new connections; open ones keep their context.
        Both contexts are built before either is swapped in, so a bad identity changes nothing."""
        server, client = PeerTrustContexts(identity, bundle)._build(self.peer_bundles)
        self.identity, self.bundle = identity, bundle
        self.server, self.client = server, client

    def trust_peers(self, peers: Mapping[str, Peer]) -> bool:
        """Trust these peers' bundles (and no other peer's); True if the contexts changed."""
        extra = "".join(peers[name].trust_bundle_pem for name in sorted(peers) if peers[name].trust_bundle_pem)
        if extra == self.peer_bundles:
            return False
        self.server, self.client = self._build(extra)
        self.peer_bundles = extra
        return True


class PeerTrustingSource:
    """A catalog source whose catalogs make `contexts` trust their peers before they are handed
    on; anything else (`stale_since`, ...) is the wrapped source's."""

    def __init__(self, source: Any, contexts: PeerTrustContexts) -> None:
        self._source = source
        self._contexts = contexts

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)

    async def __aiter__(self) -> AsyncIterator[Catalog]:
        async for catalog in self._source:
            self._contexts.trust_peers(catalog.peers)
            yield catalog


def trusting_peers(source: Any, contexts: PeerTrustContexts) -> PeerTrustingSource:
    """`source`, trusting each catalog's peers before the gateway applies it."""
    return PeerTrustingSource(source, contexts)
