"""`gateway.net.SocketIO`, the data plane's TCP stream, on real loopback sockets: bytes arrive exact
under backpressure, a connection that always has data still lets other tasks run, waits are
cancellable, and misuse or a broken peer raises trio's stream errors."""

from __future__ import annotations

import os
import socket
import struct

import pytest
import trio

from gateway.net import YIELD_EVERY, SocketIO


async def socket_pair() -> tuple[SocketIO, SocketIO]:
    """Both ends of one loopback TCP connection, each as a `SocketIO`."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)  # the kernel completes it in the backlog
    server = await listeners[0].accept()
    await listeners[0].aclose()
    return SocketIO(client), SocketIO(server)


async def test_eight_megabytes_cross_exact_while_the_reader_is_slower_than_the_writer():
    a, b = await socket_pair()
    payload = os.urandom(8 * 1024 * 1024)
    received = bytearray()

    async def read_slowly() -> None:
        while len(received) < len(payload):
            received.extend(await b.receive_some(4096))  # the writer fills the socket and waits for room
            if len(received) % (256 * 1024) < 4096:
                await trio.sleep(0.001)

    async with trio.open_nursery() as inner:
        inner.start_soon(read_slowly)
        await a.send_all(payload)
    assert bytes(received) == payload
    await a.aclose()
    await b.aclose()


async def test_a_connection_that_always_has_data_still_lets_other_tasks_run():
    a, b = await socket_pair()
    await a.send_all(b"x" * 20_000)  # more than the reads below take: every read finds data
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as inner:
        inner.start_soon(ticker)
        await trio.lowlevel.checkpoint()
        before = ticks
        for _ in range(YIELD_EVERY * 4):
            assert len(await b.receive_some(100)) == 100
        after = ticks
        inner.cancel_scope.cancel()
    assert after - before >= 3  # the reader yielded about once per YIELD_EVERY reads


async def test_waiting_for_data_is_cancellable_and_the_stream_still_works():
    a, b = await socket_pair()
    with trio.move_on_after(0.05) as scope:
        await b.receive_some()
    assert scope.cancelled_caught
    await a.send_all(b"after the cancel")
    assert await b.receive_some() == b"after the cancel"


async def test_closed_half_closed_reset_and_concurrent_sends_raise_stream_errors(nursery):
    a, b = await socket_pair()

    await a.send_eof()
    assert await b.receive_some() == b""  # the peer's end of input
    with pytest.raises(trio.ClosedResourceError):
        await a.send_all(b"after send_eof")

    # A reset from the peer (SO_LINGER 0) breaks the connection.
    b.raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await b.aclose()
    with pytest.raises(trio.BrokenResourceError):
        with trio.fail_after(5):
            while True:
                await a.receive_some()

    await a.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await a.receive_some()
    with pytest.raises(trio.ClosedResourceError):
        await a.send_all(b"after close")

    c, d = await socket_pair()

    async def fill() -> None:
        with pytest.raises(trio.ClosedResourceError):  # closed under it, below
            await c.send_all(b"y" * 64 * 1024 * 1024)  # blocks: nobody reads d

    nursery.start_soon(fill)
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(trio.BusyResourceError):
        await c.send_all(b"z")
    await c.aclose()  # wakes the blocked sender
    await d.aclose()
