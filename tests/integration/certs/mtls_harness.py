"""A mutual-TLS greeting server and client on loopback, for the certs integration tests.

The server accepts TCP on 127.0.0.1, runs the TLS handshake with the context a callable gives
for each connection, checks the client's SPIFFE ID with `peer_identity`, answers
`hello <client id>\\n` and echoes what follows. Every connection's outcome
(`("ok", spiffe_id)` or `("refused", reason, message)`) goes to `outcomes`.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

import attrs
import trio

from certs.errors import IdentityRejected
from certs.tls import classify_handshake_error, peer_identity

HANDSHAKE_TIMEOUT_S = 5


@attrs.define
class GreetingServer:
    context: Callable[[], ssl.SSLContext]
    port: int = 0
    outcomes: list[tuple] = attrs.field(factory=list)
    _send: trio.MemorySendChannel | None = None
    _receive: trio.MemoryReceiveChannel | None = None

    def __attrs_post_init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel(100)

    async def next_outcome(self) -> tuple:
        with trio.fail_after(HANDSHAKE_TIMEOUT_S):
            return await self._receive.receive()

    async def _handle(self, tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, self.context(), server_side=True)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                await stream.do_handshake()
            client = peer_identity(stream)
        except (trio.BrokenResourceError, IdentityRejected) as exc:
            outcome = ("refused", classify_handshake_error(exc), str(exc.__cause__ or exc))
            self.outcomes.append(outcome)
            await self._send.send(outcome)
            await trio.aclose_forcefully(stream)
            return
        self.outcomes.append(("ok", client))
        await self._send.send(("ok", client))
        try:
            await stream.send_all(f"hello {client}\n".encode())
            while data := await stream.receive_some(4096):
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)


async def open_client(port: int, context: ssl.SSLContext) -> trio.SSLStream:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, context, server_hostname="gateway.mesh.example")
    with trio.fail_after(HANDSHAKE_TIMEOUT_S):
        await stream.do_handshake()
    return stream


async def read_line(stream: trio.SSLStream) -> bytes:
    """One line from the server, or b'' when it closed the connection first."""
    data = b""
    with trio.fail_after(HANDSHAKE_TIMEOUT_S):
        while not data.endswith(b"\n"):
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
    return data
