"""The L4 pump between two plain TCP sockets (`gateway.tcp.pump`), with `splice(2)` and without: every
byte arrives in order both ways at once, half-close is passed on, the counts are exact, and the
pipes it opened are closed when it returns (the fd count is back where it was)."""

from __future__ import annotations

import os
import socket

import pytest
import trio

from gateway import tcp


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def connected_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listeners[0]:
        port = listeners[0].socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listeners[0].accept()
    return client, server


async def receive_all(stream: trio.SocketStream) -> bytes:
    data = bytearray()
    while chunk := await stream.receive_some(1 << 20):
        data += chunk
    return bytes(data)


@pytest.fixture(params=["splice", "recv-send"])
def pump_kind(request, monkeypatch):
    if request.param == "splice" and tcp.SPLICE is None:
        pytest.skip("os.splice is Linux-only")
    if request.param == "recv-send":
        monkeypatch.setattr(tcp, "SPLICE", None)
    return request.param


async def test_bytes_cross_both_ways_at_once_with_half_close_and_exact_counts(pump_kind):
    baseline = open_fds()
    client, downstream = await connected_pair()  # client -> gateway
    upstream, endpoint = await connected_pair()  # gateway -> endpoint
    request, response = os.urandom(3_000_000), os.urandom(5_000_000)
    results: dict[str, object] = {}

    async def run_pump() -> None:
        results["counts"] = await tcp.pump(downstream, upstream, idle_timeout_s=30, initial=b"hello ")

    async def client_side() -> None:
        async def send() -> None:
            await client.send_all(request)
            client.socket.shutdown(socket.SHUT_WR)  # half-close: the endpoint must still answer

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            results["client_got"] = await receive_all(client)

    async def endpoint_side() -> None:
        results["endpoint_got"] = await receive_all(endpoint)  # ends when the client's EOF is passed on
        await endpoint.send_all(response)
        await endpoint.send_eof()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_pump)
            nursery.start_soon(client_side)
            nursery.start_soon(endpoint_side)
    assert results["endpoint_got"] == b"hello " + request
    assert results["client_got"] == response
    counts = results["counts"]
    assert (counts.sent, counts.received) == (len(request) + 6, len(response))
    for stream in (client, downstream, upstream, endpoint):
        await stream.aclose()
    assert open_fds() == baseline


async def test_a_reset_endpoint_ends_the_pump_and_leaks_nothing(pump_kind):
    baseline = open_fds()
    client, downstream = await connected_pair()
    upstream, endpoint = await connected_pair()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: tcp.pump(downstream, upstream, idle_timeout_s=30))
            await client.send_all(b"x" * 100_000)
            assert await endpoint.receive_some(10)
            endpoint.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            await endpoint.aclose()  # RST
            await client.send_all(b"more")  # lands in the pump, which finds the endpoint gone
            client.socket.shutdown(socket.SHUT_WR)
            assert await receive_all(client) == b""
    for stream in (client, downstream, upstream):
        await stream.aclose()
    assert open_fds() == baseline
