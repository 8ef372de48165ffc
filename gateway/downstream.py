"""The downstream side of the L7 listeners: HTTP/1.1 (h11) and HTTP/2 (h2) connections from
clients, turned into `gateway.proxy.Request`s and answered through `Responder`s.

Owns: reading request heads with a header deadline (slowloris) and an idle deadline between
requests; the HTTP/1.1 smuggling guard (`gateway.h1guard`) before h11 sees a head; header
limits (431 for HTTP/1.1, GOAWAY for HTTP/2 beyond the advertised MAX_HEADER_LIST_SIZE);
`Expect: 100-continue`; keep-alive; the request headers a hop adds or strips (`x-request-id`,
`x-isthmus-peer-identity` from the verified certificate only); graceful close on drain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import h2.errors
import h11
import trio

from gateway.h1guard import check_request_head, find_head_end
from gateway.h2conn import H2Conn, H2Stream, StreamReset
from gateway.headers import (
    CLUSTER,
    PEER_IDENTITY,
    REASON,
    REQUEST_ID,
    new_request_id,
    request_protocol,
    strip_hop_by_hop,
)
from gateway.proxy import STATUS_BYTES, DownstreamGone, H2Body, Proxy, Request

READ_SIZE = 65536
# At most this much of an unread request body is read and discarded to keep a connection alive.
MAX_DISCARD_BYTES = 1024 * 1024


@attrs.define
class ListenerContext:
    """What a downstream connection needs to know about where it arrived."""

    proxy: Proxy
    eastwest: bool
    source_cluster: str
    peer_identity: bytes | None  # the verified SPIFFE ID (east-west only)
    header_timeout_s: float
    idle_timeout_s: float
    max_header_bytes: int
    max_concurrent_streams: int
    is_draining: Callable[[], bool]
    # Scopes of connections waiting for their next request: draining cancels them.
    idle_scopes: set[trio.CancelScope]
    record_bad_request: Callable[[str, str, int, str], None]


def _request_headers(regular: list[tuple[bytes, bytes]], ctx: ListenerContext) -> list[tuple[bytes, bytes]]:
    headers = strip_hop_by_hop(regular)
    if not any(name == REQUEST_ID for name, _ in headers):
        headers.append((REQUEST_ID, new_request_id()))
    if ctx.peer_identity is not None:
        headers.append((PEER_IDENTITY, ctx.peer_identity))
    return headers


# -- HTTP/2 ----------------------------------------------------------------------------------------


class H2Responder:
    __slots__ = ("conn", "stream_id", "started")

    def __init__(self, conn: H2Conn, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.started = False

    async def start(self, status: int, headers: list[tuple[bytes, bytes]], *, end_stream: bool,
                    body_ready: bool = False) -> None:
        self.started = True
        try:
            self.conn.queue_headers(self.stream_id, [(b":status", STATUS_BYTES[status]), *headers],
                                    end_stream=end_stream)
            if end_stream:
                await self.conn.flush_stream_end()
            elif not body_ready:  # else the first body chunk, queued next, goes out with the head
                self.conn.flush_soon()
        except StreamReset:
            raise DownstreamGone("downstream stream closed") from None

    async def data(self, chunk: bytes, *, end_stream: bool) -> None:
        try:
            await self.conn.send_data(self.stream_id, chunk, end_stream=end_stream)
        except StreamReset:
            raise DownstreamGone("downstream stream closed") from None

    async def trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        try:
            self.conn.queue_headers(self.stream_id, headers, end_stream=True)
            await self.conn.flush_stream_end()
        except StreamReset:
            raise DownstreamGone("downstream stream closed") from None

    async def end(self) -> None:
        await self.data(b"", end_stream=True)

    async def abort(self) -> None:
        self.conn.reset(self.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)


async def serve_h2(transport: trio.abc.Stream, ctx: ListenerContext, *, initial_data: bytes = b"",
                   on_conn: Callable[[Any], Any] | None = None) -> None:
    async def on_stream(conn: H2Conn, stream: H2Stream) -> None:
        await _handle_h2_stream(conn, stream, ctx)

    conn = H2Conn(
        transport,
        client_side=False,
        on_stream=on_stream,
        idle_timeout_s=ctx.idle_timeout_s,
        max_concurrent_streams=ctx.max_concurrent_streams,
        max_header_bytes=ctx.max_header_bytes,
        initial_data=initial_data,
    )
    if on_conn is not None:
        on_conn(conn)
    await conn.run()


async def _handle_h2_stream(conn: H2Conn, stream: H2Stream, ctx: ListenerContext) -> None:
    method = scheme = authority = path = None
    regular: list[tuple[bytes, bytes]] = []
    for name, value in stream.headers or ():
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b":scheme":
                scheme = value
        else:
            if name == b"host" and authority is None:
                authority = value
            regular.append((name, value))
    if not method or not path or not authority:
        ctx.record_bad_request(ctx.source_cluster, "http", 400, "bad-request")
        conn.reset(stream.id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
        return
    headers = _request_headers(regular, ctx)
    request = Request(
        method=method,
        scheme=scheme or b"https",
        authority=authority,
        path=path,
        headers=headers,
        body=H2Body(stream, stream.finished),
        protocol=request_protocol(regular),
        source_cluster=ctx.source_cluster,
    )
    await ctx.proxy.handle(request, H2Responder(conn, stream.id), eastwest=ctx.eastwest)


# -- HTTP/1.1 --------------------------------------------------------------------------------------


class H1Body:
    """A request body read through h11; answers `Expect: 100-continue` on the first read."""

    def __init__(self, conn: h11.Connection, transport: trio.abc.Stream, *, expect_continue: bool,
                 idle_timeout_s: float, end_stream: bool) -> None:
        self.conn = conn
        self.transport = transport
        self.expect_continue = expect_continue
        self.idle_timeout_s = idle_timeout_s
        self.end_stream = end_stream
        self.finished = end_stream
        self.trailers: list[tuple[bytes, bytes]] | None = None

    async def receive(self) -> bytes | None:
        if self.finished:
            return None
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise DownstreamGone(f"bad request body: {exc}") from None
            if event is h11.NEED_DATA:
                if self.expect_continue:
                    self.expect_continue = False
                    try:
                        await self.transport.send_all(self.conn.send(h11.InformationalResponse(status_code=100, headers=[])))
                    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
                        raise DownstreamGone("downstream closed") from None
                with trio.move_on_after(self.idle_timeout_s) as scope:
                    try:
                        data = await self.transport.receive_some(READ_SIZE)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        raise DownstreamGone("downstream closed") from None
                if scope.cancelled_caught:
                    raise DownstreamGone("request body idle")
                self.conn.receive_data(data)
                continue
            if isinstance(event, h11.Data):
                return bytes(event.data)
            if isinstance(event, h11.EndOfMessage):
                self.finished = True
                self.trailers = list(event.headers) or None
                return None
            raise DownstreamGone("request body ended early")


class H1Responder:
    def __init__(self, conn: h11.Connection, transport: trio.abc.Stream, *, close: bool,
                 is_draining: Callable[[], bool]) -> None:
        self.conn = conn
        self.transport = transport
        self.close = close
        self.is_draining = is_draining
        self.started = False
        self.chunked = True
        self.aborted = False
        self._head = b""  # a response head held for the body chunk that follows (`start(body_ready=True)`)

    async def _send(self, data: bytes) -> None:
        if self._head:
            data, self._head = self._head + data, b""
        try:
            await self.transport.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.aborted = True
            raise DownstreamGone("downstream closed") from None

    async def start(self, status: int, headers: list[tuple[bytes, bytes]], *, end_stream: bool,
                    body_ready: bool = False) -> None:
        self.started = True
        out = [(n, v) for n, v in headers if n[:1] != b":"]
        self.chunked = not any(n == b"content-length" for n, _ in out)
        self.close = self.close or self.is_draining()
        if self.close:
            out.append((b"connection", b"close"))
        try:
            data = self.conn.send(h11.Response(status_code=status, headers=out))
            if end_stream:
                data += self.conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            self.aborted = True
            raise DownstreamGone("response not representable in HTTP/1.1") from None
        if body_ready and not end_stream:
            self._head = data  # one write with the first chunk
            return
        await self._send(data)

    async def data(self, chunk: bytes, *, end_stream: bool) -> None:
        try:
            data = self.conn.send(h11.Data(data=chunk))
            if end_stream:
                data += self.conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            self.aborted = True
            raise DownstreamGone("response body does not match its length") from None
        await self._send(data)

    async def trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        try:
            data = self.conn.send(h11.EndOfMessage(headers=headers if self.chunked else []))
        except h11.LocalProtocolError:
            self.aborted = True
            raise DownstreamGone("response body does not match its length") from None
        await self._send(data)

    async def end(self) -> None:
        await self.trailers([])

    async def abort(self) -> None:
        self.aborted = True


def _raw_response(status: int, reason: str, cluster: bytes) -> bytes:
    phrase = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large",
              501: b"Not Implemented"}.get(status, b"Error")
    body = f"{status} {reason}\n".encode()
    return (b"HTTP/1.1 " + STATUS_BYTES[status] + b" " + phrase + b"\r\ncontent-type: text/plain\r\n"
            + b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n"
            + REASON + b": " + reason.encode() + b"\r\n" + CLUSTER + b": " + cluster + b"\r\n\r\n" + body)


async def serve_h1(transport: trio.abc.Stream, ctx: ListenerContext, *, initial_data: bytes = b"") -> None:
    """Serve HTTP/1.1 requests on one connection until it closes, idles out or misbehaves."""
    buffer = bytearray(initial_data)
    cluster = ctx.proxy.cluster_bytes

    async def refuse(status: int, reason: str) -> None:
        ctx.record_bad_request(ctx.source_cluster, "http", status, reason)
        with trio.move_on_after(1):
            try:
                await transport.send_all(_raw_response(status, reason, cluster))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    while True:
        # A request head: the idle deadline until its first byte, then the header deadline.
        head_end = find_head_end(buffer)
        head_deadline = trio.current_time() + ctx.header_timeout_s if buffer else None
        while head_end < 0:
            if len(buffer) > ctx.max_header_bytes:
                await refuse(431, "headers-too-large")
                return
            if head_deadline is None:
                deadline = trio.current_time() + ctx.idle_timeout_s
            else:
                deadline = head_deadline
            scope = trio.CancelScope(deadline=deadline)
            waiting_idle = not buffer
            if waiting_idle:
                if ctx.is_draining():
                    return
                ctx.idle_scopes.add(scope)
            try:
                with scope:
                    data = await transport.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            finally:
                if waiting_idle:
                    ctx.idle_scopes.discard(scope)
            if scope.cancelled_caught:
                if buffer:
                    await refuse(408, "header-timeout")
                return
            if not data:
                return
            if head_deadline is None:
                head_deadline = trio.current_time() + ctx.header_timeout_s
            start = max(0, len(buffer) - 3)
            buffer += data
            head_end = find_head_end(buffer, start)
        if head_end > ctx.max_header_bytes:
            await refuse(431, "headers-too-large")
            return
        verdict = check_request_head(bytes(buffer[:head_end]))
        if verdict is not None:
            await refuse(verdict.status, verdict.reason)
            return
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=ctx.max_header_bytes)
        conn.receive_data(bytes(buffer))
        buffer.clear()
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            await refuse(exc.error_status_hint if exc.error_status_hint in (400, 431, 501) else 400, "bad-request")
            return
        if not isinstance(event, h11.Request):
            await refuse(400, "bad-request")
            return
        regular = [(name, value) for name, value in event.headers]
        authority = None
        has_body = False
        expect_continue = False
        for name, value in regular:
            if name == b"host":
                authority = value
            elif name == b"content-length":
                has_body = value != b"0"
            elif name == b"transfer-encoding":
                has_body = True
            elif name == b"expect" and value.lower() == b"100-continue":
                expect_continue = True
        if authority is None:
            await refuse(400, "missing-host")
            return
        headers = [(n, v) for n, v in _request_headers(regular, ctx) if n != b"expect"]
        body = H1Body(conn, transport, expect_continue=expect_continue, idle_timeout_s=ctx.idle_timeout_s,
                      end_stream=not has_body)
        if not has_body:
            conn.next_event()  # the EndOfMessage of a body-less request
        close = ctx.is_draining() or conn.their_http_version < b"1.1" or any(
            n == b"connection" and b"close" in v.lower() for n, v in regular
        )
        responder = H1Responder(conn, transport, close=close, is_draining=ctx.is_draining)
        request = Request(
            method=event.method,
            scheme=b"http",
            authority=authority,
            path=event.target,
            headers=headers,
            body=body,
            protocol=request_protocol(regular),
            source_cluster=ctx.source_cluster,
        )
        await ctx.proxy.handle(request, responder, eastwest=ctx.eastwest)
        if responder.aborted or responder.close or conn.our_state is not h11.DONE:
            return
        # Read and drop what is left of the request body, so the connection can be reused.
        discarded = 0
        while conn.their_state is h11.SEND_BODY and discarded <= MAX_DISCARD_BYTES:
            try:
                chunk = await body.receive()
            except DownstreamGone:
                return
            if chunk is None:
                break
            discarded += len(chunk)
        if conn.their_state is not h11.DONE:
            return
        leftover, closed = conn.trailing_data
        if closed and not leftover:
            return
        buffer = bytearray(leftover)
