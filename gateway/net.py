"""Sockets and TLS for the gateway's trio shell: listeners (with SO_REUSEPORT), connecting with a
deadline, mutual-TLS client connections that check the server's SPIFFE ID, a stream that
replays bytes already read (the ClientHello and HTTP/2 preface peeks), and `SocketIO`, the
data plane's TCP stream.

`SocketIO` is a connected socket as a trio stream that calls the non-blocking socket directly:
trio's `SocketStream` makes every successful send and receive a schedule point (a pass of the
run loop before the caller goes on), which at low concurrency was two of the seven passes a
proxied request took. `SocketIO` checks for cancellation on every call, waits for readiness only
when the socket would block, and yields to the scheduler once every `YIELD_EVERY` calls, so a
busy connection still lets the others run.

Source address: outgoing connections may bind a local address (`local_address`), so traffic
between two clusters on one machine leaves from each cluster's own loopback address and drills
can partition them with iptables. `source_address_of(config)` gives a gateway's choice:
`GatewayConfig.source_address` when set, else the east-west listener's host when it is a
specific loopback address other than 127.0.0.1 (the demo binds each cluster to 127.0.N.1), else none.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from certs.errors import IdentityRejected
from certs.tls import peer_identity
from gateway.errors import UpstreamConnectError

# Accept errors that mean "out of resources for a moment", not "the listener is broken".
TRANSIENT_ACCEPT_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS, errno.ECONNABORTED}
# A `SocketIO` yields to the scheduler once per this many sends and receives (and whenever it waits).
YIELD_EVERY = 16
RECEIVE_SIZE = 65536
_CLOSED_ERRNOS = {errno.EBADF, errno.ENOTSOCK}


def _stream_error(exc: OSError) -> trio.ClosedResourceError | trio.BrokenResourceError:
    """A socket error as trio's stream errors (as `trio.SocketStream` translates them)."""
    if exc.errno in _CLOSED_ERRNOS:
        return trio.ClosedResourceError("this socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


class SocketIO(trio.abc.HalfCloseableStream):
    """A connected TCP `trio.SocketStream`, sending and receiving without a schedule point per call
    (see the module docstring). Closing, half-closing and socket options are the wrapped stream's."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.socket = stream.socket
        self.raw: socket.socket = stream.socket._sock  # type: ignore[attr-defined]
        self._calls = 0
        self._sending = False
        self._drained = False
        self._backlog: bytes | memoryview = b""  # what `send_now` took that the socket had no room for yet

    async def _schedule_point(self) -> None:
        self._calls += 1
        if self._calls >= YIELD_EVERY:
            self._calls = 0
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()

    async def _wait(self, wait: Callable[[socket.socket], Awaitable[None]]) -> None:
        """The socket would block: wait until it is ready (ClosedResourceError if it was closed)."""
        if self.raw.fileno() == -1:
            raise trio.ClosedResourceError("this socket was already closed")
        await wait(self.raw)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await self._schedule_point()
        sock = self.raw
        size = max_bytes or RECEIVE_SIZE
        if self._drained:
            # The last read took less than it asked for, so the socket was empty then: wait for it
            # rather than find that out with one more recv.
            self._drained = False
            await self._wait(trio.lowlevel.wait_readable)
        while True:
            try:
                data = sock.recv(size)
            except BlockingIOError:
                await self._wait(trio.lowlevel.wait_readable)
                continue
            except OSError as exc:
                raise _stream_error(exc) from exc
            self._drained = 0 < len(data) < size
            return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is currently sending data on this socket")
        if self.socket.did_shutdown_SHUT_WR:
            raise trio.ClosedResourceError("can't send data after sending EOF")
        self._sending = True
        try:
            await self._schedule_point()
            if self._backlog:
                backlog, self._backlog = self._backlog, b""
                await self._send_view(backlog)
            if data:
                await self._send_view(data)
        finally:
            self._sending = False

    async def _send_view(self, data: bytes | bytearray | memoryview) -> None:
        sock = self.raw
        with memoryview(data) as view:
            done, total = 0, len(view)
            while done < total:
                try:
                    done += sock.send(view[done:] if done else view)
                except BlockingIOError:
                    await self._wait(trio.lowlevel.wait_writable)
                except OSError as exc:
                    raise _stream_error(exc) from exc

    # Sending without waiting: `SocketIO` is a `NowSender` itself.

    def can_send_now(self) -> bool:
        """True when no send is under way or backlogged, so `send_now` would take data."""
        return not (self._sending or self._backlog or self.socket.did_shutdown_SHUT_WR)

    def send_now(self, data: bytes | bytearray) -> bool:
        """Send `data` at once, without a schedule point, unless `can_send_now()` is False (then
        nothing is taken). What the socket has no room for stays as the backlog, which goes out
        first on the next send; `backlogged` says there is one and `flush()` sends it."""
        if not self.can_send_now():
            return False
        try:
            sent = self.raw.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise _stream_error(exc) from exc
        if sent < len(data):
            if type(data) is bytes:
                self._backlog = memoryview(data)[sent:]  # type: ignore[assignment]
            else:  # the caller may reuse a bytearray
                with memoryview(data) as view:
                    self._backlog = bytes(view[sent:])
        return True

    @property
    def backlogged(self) -> bool:
        return bool(self._backlog)

    async def flush(self) -> None:
        """Send the backlog `send_now` left (waiting for room as `send_all` does)."""
        await self.send_all(b"")

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.stream.setsockopt(level, option, value)

    def getsockopt(self, level: int, option: int) -> int:
        return self.stream.getsockopt(level, option)


class EagerLock:
    """A FIFO async lock that takes no schedule point when it is free.

    `trio.SSLStream` serialises its transport's sends and receives with `trio` locks, and a trio
    lock yields to the scheduler on every uncontended acquire: one extra pass of the run loop
    before each TLS record goes out or comes in, on the path of every proxied request (about a
    tenth of the latency at one stream). The stream has already checked for cancellation when it
    takes the lock, and `SocketIO` underneath yields once per `YIELD_EVERY` calls, so a free lock
    is taken at once; a held one queues its waiters in order (`trio.SSLStream` relies on FIFO
    order for its sends) and hands the lock to the first on release.
    """

    __slots__ = ("_held", "_waiters")

    def __init__(self) -> None:
        self._held = False
        self._waiters = trio.lowlevel.ParkingLot()

    def locked(self) -> bool:
        return self._held

    async def __aenter__(self) -> None:
        if self._held:
            await self._waiters.park()  # woken as the owner: `__aexit__` keeps `_held` set
        else:
            self._held = True

    async def __aexit__(self, *exc_info: object) -> None:
        if self._waiters:
            self._waiters.unpark()
        else:
            self._held = False


def tls_stream(transport: trio.abc.Stream, context: ssl.SSLContext, *, server_side: bool = False,
               server_hostname: str | None = None) -> trio.SSLStream:
    """`trio.SSLStream` over `transport` (not HTTPS-compatible: a missing close_notify is an
    error) with `EagerLock`s in place of its internal send and receive locks."""
    stream = trio.SSLStream(transport, context, server_side=server_side, server_hostname=server_hostname,
                            https_compatible=False)
    stream._inner_send_lock = EagerLock()  # type: ignore[assignment]
    stream._inner_recv_lock = EagerLock()  # type: ignore[assignment]
    return stream


class PrefixedStream(trio.abc.Stream):
    """A stream that first returns `prefix`, then reads from `inner`."""

    def __init__(self, inner: trio.abc.Stream, prefix: bytes) -> None:
        self.inner = inner
        self.prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.prefix:
            if max_bytes is None or max_bytes >= len(self.prefix):
                data, self.prefix = self.prefix, b""
            else:
                data, self.prefix = self.prefix[:max_bytes], self.prefix[max_bytes:]
            return data
        return await self.inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        send_eof = getattr(self.inner, "send_eof", None)
        if send_eof is not None:
            await send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


class NowSender(Protocol):
    """Sends on a data-plane stream without waiting, when it can: `send_now(data)` hands `data` to
    the socket at once and returns True, or returns False having taken nothing (a send is under
    way, waiting or backlogged). What the socket had no room for is its backlog (`backlogged`),
    which goes out first on the stream's next send; `flush()` sends it. `SocketIO` is one;
    `TLSNowSender` is one for TLS over a `SocketIO`.

    A stream's task sending the frames that end its exchange needs no cancel shield (a trio cancel
    scope costs about as much as the send) when the socket takes them at once, which on a quiet
    connection it nearly always does."""

    def send_now(self, data: bytes | bytearray) -> bool: ...

    @property
    def backlogged(self) -> bool: ...

    async def flush(self) -> None: ...


class TLSNowSender:
    """`NowSender` for a `trio.SSLStream` over a `SocketIO`: the record is made and handed to the
    socket at once, and only when nothing is ahead of it (no send under way or waiting, no record
    pending in the stream, no backlog), so records reach the wire in the order they were made, as
    `trio.SSLStream` itself keeps them."""

    def __init__(self, tls: trio.SSLStream, sock: SocketIO) -> None:
        self.tls = tls
        self.sock = sock

    def send_now(self, data: bytes | bytearray) -> bool:
        tls = self.tls
        if (not data or tls._state is not _TLS_OK or not tls._handshook.done or tls._inner_send_lock.locked()
                or tls._outgoing.pending or tls._delayed_outgoing is not None or not self.sock.can_send_now()):
            return False
        try:
            tls._ssl_object.write(data)
            self.sock.send_now(tls._outgoing.read())
        except ssl.SSLError as exc:
            tls._state = _TLS_BROKEN
            raise trio.BrokenResourceError from exc
        except BaseException:
            tls._state = _TLS_BROKEN
            raise
        return True

    @property
    def backlogged(self) -> bool:
        return self.sock.backlogged

    async def flush(self) -> None:
        if not self.sock.backlogged:
            return
        async with self.tls._inner_send_lock:
            try:
                await self.sock.flush()
            except BaseException:
                self.tls._state = _TLS_BROKEN  # part of a record may have gone out
                raise


_TLS_OK = trio._ssl._State.OK
_TLS_BROKEN = trio._ssl._State.BROKEN


class TLSReceiver:
    """Receives on a `trio.SSLStream` (for the data plane's HTTP/2 reader).

    When the TLS layer holds nothing (no bytes waiting to be decrypted, nothing decrypted and not
    taken, no other receive under way), the next record can only come from the socket: it is read
    and decrypted directly, rather than through `trio.SSLStream`'s retry loop, which first tries a
    decryption that fails. Every record already complete after that read is decrypted too and
    returned together (trio returns one record, at most 16 KiB, per call). Anything else (a partial
    record, an alert, the end of the stream, the stream not ready) is left to `trio.SSLStream`,
    with the bytes already handed to it; a record that needs an answer (a TLS 1.3 key update) has
    it sent before the data is returned."""

    __slots__ = ("tls",)

    def __init__(self, tls: trio.SSLStream) -> None:
        self.tls = tls

    async def receive_some(self, max_bytes: int) -> bytes:
        tls = self.tls
        ssl_object = tls._ssl_object
        if (tls._state is not _TLS_OK or not tls._handshook.done or tls._incoming.pending
                or tls._inner_recv_lock.locked() or ssl_object.pending()):
            return await tls.receive_some(max_bytes)  # type: ignore[return-value]
        async with tls._inner_recv_lock:
            data = await tls.transport_stream.receive_some(max_bytes)
            if data:
                tls._incoming.write(data)
            else:
                tls._incoming.write_eof()
            tls._inner_recv_count += 1
        try:
            received = ssl_object.read(max_bytes)
        except ssl.SSLError:
            return await tls.receive_some(max_bytes)  # type: ignore[return-value]
        if len(received) < max_bytes and (tls._incoming.pending or ssl_object.pending()):
            parts = [received]
            taken = len(received)
            while taken < max_bytes:
                try:
                    more = ssl_object.read(max_bytes - taken)
                except ssl.SSLError:  # the next record is not all here (or fails): for the next call
                    break
                if not more:
                    break
                parts.append(more)
                taken += len(more)
            received = b"".join(parts)
        if tls._outgoing.pending:
            with trio.CancelScope(shield=True):  # the decrypted bytes must not be lost to a cancel
                await tls._retry(_nothing)  # sends what the record asked for, as trio would
        return received


def _nothing() -> None:
    return None


def _socket_io_under(stream: trio.abc.Stream) -> SocketIO | None:
    """The `SocketIO` a data-plane stream (a `SocketIO`, or TLS over one) runs on, or None."""
    inner = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    while isinstance(inner, PrefixedStream):  # its replayed prefix is on the receiving side only
        inner = inner.inner
    return inner if isinstance(inner, SocketIO) else None


def now_sender(stream: trio.abc.Stream) -> NowSender | None:
    """A `NowSender` for `stream` (a `SocketIO`, or TLS over one), or None."""
    sock = _socket_io_under(stream)
    if sock is None:
        return None
    return TLSNowSender(stream, sock) if isinstance(stream, trio.SSLStream) else sock


def receiver(stream: trio.abc.Stream) -> Callable[[int], Awaitable[bytes]]:
    """`stream.receive_some`, or for TLS a `TLSReceiver`'s."""
    if isinstance(stream, trio.SSLStream):
        return TLSReceiver(stream).receive_some
    return stream.receive_some  # type: ignore[return-value]


async def open_listener(host: str, port: int, *, reuse_port: bool = False, backlog: int = 1024) -> trio.SocketListener:
    """A bound, listening TCP listener (SO_REUSEPORT when several worker processes share the port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        await sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return trio.SocketListener(sock)


def set_nodelay(stream: trio.abc.Stream) -> None:
    sock = getattr(stream, "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def source_address_of(config: Any) -> str | None:
    """The local address a gateway's outgoing connections bind (see the module docstring)."""
    chosen = getattr(config, "source_address", None)
    if chosen:
        return str(chosen)
    try:
        host = config.eastwest_address[0]
        address = ipaddress.ip_address(host)
    except (AttributeError, ValueError):
        return None
    if address.is_loopback and address.version == 4 and str(address) != "127.0.0.1":
        return str(address)
    return None


async def connect(host: str, port: int, *, timeout_s: float, local_address: str | None = None) -> SocketIO:
    """A TCP connection (from `local_address` when given), or `UpstreamConnectError` naming the address."""
    try:
        with trio.fail_after(timeout_s):
            stream = await trio.open_tcp_stream(host, port, local_address=local_address)
    except trio.TooSlowError:
        # A connect that times out is a connect failure (503, and another endpoint may be tried).
        raise UpstreamConnectError(f"connect to {host}:{port} timed out after {timeout_s}s") from None
    except OSError as exc:
        raise UpstreamConnectError(f"connect to {host}:{port}: {exc.strerror or exc}") from None
    set_nodelay(stream)
    return SocketIO(stream)


async def connect_tls(
    host: str,
    port: int,
    context: ssl.SSLContext,
    *,
    server_name: str,
    expect_cluster: str | None,
    timeout_s: float,
    local_address: str | None = None,
) -> trio.SSLStream:
    """Mutual TLS to a peer gateway; the server's SPIFFE ID must belong to `expect_cluster`."""
    tcp = await connect(host, port, timeout_s=timeout_s, local_address=local_address)
    stream = tls_stream(tcp, context, server_hostname=server_name)
    try:
        with trio.fail_after(timeout_s):
            await stream.do_handshake()
        identity = peer_identity(stream)
    except trio.TooSlowError:
        await trio.aclose_forcefully(stream)
        raise UpstreamConnectError(f"TLS handshake with {host}:{port} timed out") from None
    except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
        await trio.aclose_forcefully(stream)
        cause = exc.__cause__ or exc
        raise UpstreamConnectError(f"TLS handshake with {host}:{port}: {cause}") from None
    except IdentityRejected as exc:
        await trio.aclose_forcefully(stream)
        raise UpstreamConnectError(f"peer gateway {host}:{port}: {exc}") from None
    if expect_cluster is not None and identity.cluster != expect_cluster:
        await trio.aclose_forcefully(stream)
        raise UpstreamConnectError(
            f"peer gateway {host}:{port} presented {identity}, not an identity of cluster {expect_cluster!r}"
        )
    return stream
