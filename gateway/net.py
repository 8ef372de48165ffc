"""Sockets and TLS for the gateway's trio shell: listeners (with SO_REUSEPORT), connecting with a
deadline, mutual-TLS client connections that check the server's SPIFFE ID, and a stream that
replays bytes already read (the ClientHello and HTTP/2 preface peeks).

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
from typing import Any

import trio

from certs.errors import IdentityRejected
from certs.tls import peer_identity
from gateway.errors import UpstreamConnectError

# Accept errors that mean "out of resources for a moment", not "the listener is broken".
TRANSIENT_ACCEPT_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS, errno.ECONNABORTED}


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


async def connect(host: str, port: int, *, timeout_s: float, local_address: str | None = None) -> trio.SocketStream:
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
    return stream


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
    stream = trio.SSLStream(tcp, context, server_hostname=server_name, https_compatible=False)
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
