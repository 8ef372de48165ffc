"""`gateway.tlsio.SocketTLSStream` against `trio.SSLStream` and itself, over a local socketpair
(no network): mutual TLS with the mesh PKI, the peer's SPIFFE ID, a peeked ClientHello replayed,
bulk data both ways, HTTP/2 on top, clean and ragged closes, and refused handshakes with the reason
`certs.tls.classify_handshake_error` reports for them."""

from __future__ import annotations

import socket

import pytest
import trio

from certs.testing import make_pki
from certs.tls import classify_handshake_error, client_context, peer_identity
from gateway.h2conn import H2Conn, H2Stream
from gateway.tlsio import SocketTLSStream


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("tlsio-pki"), clusters={"east-1": ("us-east", "us-east-1a"),
                                                                    "west-1": ("us-west", "us-west-1a")})


def socket_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = socket.socketpair()
    return (trio.SocketStream(trio.socket.from_stdlib_socket(a)), trio.SocketStream(trio.socket.from_stdlib_socket(b)))


async def handshake_both(server: trio.abc.Stream, client: trio.abc.Stream) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)


@pytest.mark.parametrize("client_kind", ["tlsio", "trio"])
async def test_mutual_tls_both_ways_with_the_peer_identity(pki, client_kind):
    a, b = socket_pair()
    server = SocketTLSStream(b, pki.server_context("west-1"), server_side=True)
    if client_kind == "tlsio":
        client = SocketTLSStream(a, pki.client_context("east-1"), server_side=False, server_hostname="echo.demo")
    else:
        client = trio.SSLStream(a, pki.client_context("east-1"), server_hostname="echo.demo")
    with trio.fail_after(10):
        await handshake_both(server, client)
        assert peer_identity(server) == pki.spiffe_id("east-1")
        assert peer_identity(client) == pki.spiffe_id("west-1")
        assert server.selected_alpn_protocol() == "h2"
        payload = bytes(range(256)) * 4096  # 1 MiB: many records, several socket sends

        async def read_all(stream: trio.abc.Stream, size: int) -> bytes:
            got = bytearray()
            while len(got) < size:
                chunk = await stream.receive_some(65536)
                assert chunk
                got += chunk
            return bytes(got)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, payload)
            assert await read_all(server, len(payload)) == payload
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.send_all, payload[::-1])
            assert await read_all(client, len(payload)) == payload[::-1]
        await client.aclose()
        assert await server.receive_some() == b""  # close_notify reads as a clean end
        await server.aclose()


async def test_a_peeked_client_hello_is_replayed(pki):
    a, b = socket_pair()
    client = SocketTLSStream(a, pki.client_context("east-1"), server_side=False)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.do_handshake)
            hello = await b.receive_some(65536)  # what the listener peeks for SNI
            server = SocketTLSStream(b, pki.server_context("west-1"), server_side=True, initial=hello)
            await server.do_handshake()
        await client.send_all(b"ping")
        assert await server.receive_some() == b"ping"
        await client.aclose()
        await server.aclose()


async def test_a_peer_without_a_client_certificate_is_refused_with_a_reason(pki):
    a, b = socket_pair()
    server = SocketTLSStream(b, pki.server_context("west-1"), server_side=True)
    client = trio.SSLStream(a, client_context(None, pki.bundle), server_hostname="echo.demo")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async def client_side() -> None:
                try:
                    await client.do_handshake()
                    await client.receive_some()  # TLS 1.3: the refusal arrives after the client's Finished
                except trio.BrokenResourceError:
                    pass

            nursery.start_soon(client_side)
            with pytest.raises(trio.BrokenResourceError) as caught:
                await server.do_handshake()
    assert classify_handshake_error(caught.value) == "no-client-cert"
    await server.aclose()
    await client.aclose()


async def test_a_ragged_close_is_a_broken_stream(pki):
    a, b = socket_pair()
    server = SocketTLSStream(b, pki.server_context("west-1"), server_side=True)
    client = SocketTLSStream(a, pki.client_context("east-1"), server_side=False)
    with trio.fail_after(10):
        await handshake_both(server, client)
        a.socket.close()  # no close_notify
        with pytest.raises(trio.BrokenResourceError):
            await server.receive_some()
    await server.aclose()


async def test_http2_runs_over_it(pki):
    a, b = socket_pair()
    server_tls = SocketTLSStream(b, pki.server_context("west-1"), server_side=True)
    client_tls = SocketTLSStream(a, pki.client_context("east-1"), server_side=False)

    async def answer(conn: H2Conn, stream: H2Stream) -> None:
        body = b""
        while (chunk := await stream.receive_chunk()) is not None:
            body += chunk
        conn.send_headers(stream.id, [(b":status", b"200")])
        await conn.send_data(stream.id, body[::-1], end_stream=True)

    with trio.fail_after(20):
        await handshake_both(server_tls, client_tls)
        async with trio.open_nursery() as nursery:
            server = H2Conn(server_tls, client_side=False, on_stream=answer)
            client = H2Conn(client_tls, client_side=True)
            nursery.start_soon(server.run)
            await nursery.start(client.run)

            async def one(i: int) -> None:
                body = str(i).encode() * 20000
                stream = await client.open_stream([(b":method", b"POST"), (b":scheme", b"https"),
                                                   (b":authority", b"echo.demo"), (b":path", b"/")],
                                                  end_stream=False)
                await client.send_data(stream.id, body, end_stream=True)
                assert (b":status", b"200") in await stream.receive_headers()
                got = b""
                while (chunk := await stream.receive_chunk()) is not None:
                    got += chunk
                assert got == body[::-1]
                client.forget(stream.id)

            async with trio.open_nursery() as requests:
                for i in range(20):
                    requests.start_soon(one, i)
            nursery.cancel_scope.cancel()
