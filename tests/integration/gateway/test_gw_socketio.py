"""`gateway.net.SocketIO`, the data plane's TCP stream, on real loopback sockets: bytes arrive exact
under backpressure, a connection that always has data still lets other tasks run, a short read is
followed by a wait rather than a read that finds nothing, waits are cancellable, and misuse or a
broken peer raises trio's stream errors. And the data plane's TLS stream (`gateway.net.tls_stream`):
its locks take no schedule point when free, keep their waiters in order, and mutual TLS carries
bytes exact both ways at once."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio

from certs.tls import client_context, server_context
from gateway.net import YIELD_EVERY, EagerLock, PrefixedStream, SocketIO, now_sender, receiver, tls_stream


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


class Passes:
    """Counts the scheduler's passes: a task that takes one step per pass while `counting()` runs."""

    def __init__(self) -> None:
        self.ticks = 0

    async def _tick(self) -> None:
        while True:
            self.ticks += 1
            await trio.lowlevel.checkpoint()


@contextlib.asynccontextmanager
async def counting_passes() -> AsyncIterator[Passes]:
    passes = Passes()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(passes._tick)
        await trio.lowlevel.checkpoint()  # the ticker has started
        yield passes
        nursery.cancel_scope.cancel()


async def test_a_connection_that_always_has_data_still_lets_other_tasks_run():
    a, b = await socket_pair()
    await a.send_all(b"x" * 20_000)  # more than the reads below take: every read finds data
    async with counting_passes() as passes:
        before = passes.ticks
        for _ in range(YIELD_EVERY * 4):
            assert len(await b.receive_some(100)) == 100
        after = passes.ticks
    assert after - before >= 3  # the reader yielded about once per YIELD_EVERY reads


class CountingSocket:
    """A socket whose `recv` calls are counted (everything else is the socket's)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.recvs = 0

    def recv(self, size: int) -> bytes:
        self.recvs += 1
        return self.sock.recv(size)

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


async def test_a_short_read_is_followed_by_a_wait_not_by_a_read_that_finds_nothing(nursery):
    a, b = await socket_pair()
    counting = CountingSocket(b.raw)
    b.raw = counting  # type: ignore[assignment]
    await a.send_all(b"0123456789")
    assert await b.receive_some(4) == b"0123"  # as much as asked: more may be waiting
    assert await b.receive_some(100) == b"456789"  # read at once; less than asked: the socket is empty
    assert counting.recvs == 2

    async def later() -> None:
        await trio.sleep(0.05)
        await a.send_all(b"later")

    nursery.start_soon(later)
    assert await b.receive_some(100) == b"later"
    assert counting.recvs == 3  # one recv, after the socket became readable
    await a.send_eof()
    assert await b.receive_some(100) == b""  # the end still reads as the end
    await a.aclose()
    await b.aclose()


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


# -- the TLS stream's locks -----------------------------------------------------------------------


async def test_a_free_eager_lock_takes_no_schedule_point_and_waiters_get_it_in_order():
    lock = EagerLock()
    with trio.testing.assert_no_checkpoints():
        async with lock:
            assert lock.locked()
    assert not lock.locked()

    got: list[int] = []

    async def waiter(n: int, scope: trio.CancelScope) -> None:
        with scope:
            async with lock:
                got.append(n)
                await trio.sleep(0.01)  # the others stay queued meanwhile

    scopes = [trio.CancelScope() for _ in range(4)]
    with trio.fail_after(5):
        async with trio.open_nursery() as waiters:
            async with lock:
                for n, scope in enumerate(scopes):
                    waiters.start_soon(waiter, n, scope)
                    await trio.testing.wait_all_tasks_blocked()
                scopes[2].cancel()  # a waiter that gives up leaves the queue
                await trio.testing.wait_all_tasks_blocked()
    assert got == [0, 1, 3]
    assert not lock.locked()


async def tls_pair(gateway_pki, *, handshake: bool = True) -> tuple[trio.SSLStream, trio.SSLStream, SocketIO]:
    """Mutual TLS (server, client) over one loopback connection, handshaken unless asked not to, and
    the client's socket."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    raw_client = SocketIO(await trio.open_tcp_stream("127.0.0.1", port))
    raw_server = SocketIO(await listeners[0].accept())
    await listeners[0].aclose()
    server = tls_stream(raw_server, server_context(gateway_pki.identity("west-1"), gateway_pki.bundle),
                        server_side=True)
    client = tls_stream(raw_client, client_context(gateway_pki.identity("east-1"), gateway_pki.bundle),
                        server_hostname="west-1")
    if handshake:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.do_handshake)
            await client.do_handshake()
    return server, client, raw_client


async def test_mutual_tls_over_the_gateways_stream_carries_both_directions_at_once(gateway_pki):
    server, client, raw_client = await tls_pair(gateway_pki, handshake=False)
    up, down = os.urandom(4 * 1024 * 1024), os.urandom(4 * 1024 * 1024)
    got = {"server": bytearray(), "client": bytearray()}

    async def pump(stream: trio.SSLStream, data: bytes, into: bytearray) -> None:
        async with trio.open_nursery() as both:
            both.start_soon(stream.send_all, data)  # sends and receives on one stream, concurrently
            while len(into) < len(data):
                chunk = await stream.receive_some()
                assert chunk, "the peer closed early"
                into.extend(chunk)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, server, down, got["server"])
            nursery.start_soon(pump, client, up, got["client"])
    assert bytes(got["server"]) == up and bytes(got["client"]) == down

    # A record sent while the socket has room goes out without a pass of the scheduler.
    raw_client._calls = 0  # not the one call in YIELD_EVERY that yields on purpose
    async with counting_passes() as passes:
        before = passes.ticks
        await client.send_all(b"ping")
        assert passes.ticks == before
    assert await server.receive_some() == b"ping"
    await trio.aclose_forcefully(client)
    await trio.aclose_forcefully(server)


# -- sending without waiting -----------------------------------------------------------------------


async def read_exactly(receive: Callable[[int], Awaitable[bytes]], size: int) -> bytes:
    """`size` bytes from `receive` (a stream's `receive_some`, or a `receiver`)."""
    got = bytearray()
    with trio.fail_after(10):
        while len(got) < size:
            chunk = await receive(262_144)
            assert chunk, "the peer closed early"
            got.extend(chunk)
    return bytes(got)


async def test_a_send_now_goes_out_at_once_and_what_finds_no_room_goes_first_on_the_next_send():
    a, b = await socket_pair()
    now = now_sender(PrefixedStream(a, b""))  # as the east-west listener wraps it
    assert now is not None and now_sender(trio.testing.memory_stream_pair()[0]) is None
    async with counting_passes() as passes:
        before = passes.ticks
        assert now.send_now(b"first,")
        assert passes.ticks == before and not now.backlogged
    assert await b.receive_some() == b"first,"

    big = os.urandom(32 * 1024 * 1024)  # more than the socket buffers hold: nobody reads yet
    assert now.send_now(big) and now.backlogged
    assert not now.send_now(b"refused")  # a backlog is ahead of it: nothing taken
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send_all, b",last")  # the backlog goes out first
        assert await read_exactly(b.receive_some, len(big) + 5) == big + b",last"
    assert not now.backlogged
    await a.aclose()
    await b.aclose()


async def test_tls_records_sent_now_and_by_send_all_reach_the_peer_in_order(gateway_pki):
    server, client, raw_client = await tls_pair(gateway_pki, handshake=False)
    now = now_sender(client)
    assert now is not None
    assert not now.send_now(b"before the handshake")  # nothing taken: the handshake has not run
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        await client.do_handshake()

    async with counting_passes() as passes:
        before = passes.ticks
        assert now.send_now(b"one,")
        assert passes.ticks == before
    big = os.urandom(16 * 1024 * 1024)
    assert now.send_now(big) and now.backlogged  # the socket took part of the records
    assert not now.send_now(b"refused")
    blocked = trio.Event()

    async def send_more() -> None:
        blocked.set()
        await client.send_all(b",two")  # waits behind the backlog
        await now.flush()  # nothing left: returns
        assert now.send_now(b",three")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_more)
        await blocked.wait()
        assert await read_exactly(server.receive_some, 4 + len(big) + 10) == b"one," + big + b",two,three"

    # A socket that breaks under a send now leaves the TLS stream broken, as trio's own send does.
    await trio.aclose_forcefully(server)
    with pytest.raises(trio.BrokenResourceError):
        with trio.fail_after(5):
            while True:
                now.send_now(b"x" * 65536)
                await now.flush()
    with pytest.raises(trio.BrokenResourceError):
        await client.send_all(b"after")
    await trio.aclose_forcefully(client)


async def test_the_tls_receiver_returns_every_complete_record_at_once_and_the_end_as_trio_does(gateway_pki):
    server, client, raw_client = await tls_pair(gateway_pki)
    receive = receiver(server)
    payload = os.urandom(100_000)  # seven records
    await client.send_all(payload)
    await trio.testing.wait_all_tasks_blocked()
    got = await receive(262_144)
    assert payload.startswith(got) and len(got) > 16_384  # trio's own receive returns one record
    got += await read_exactly(receive, len(payload) - len(got))
    assert got == payload
    assert len(await receive_after(client, receive, b"x" * 10, 4)) == 4  # at most what was asked for
    assert await receive(100) == b"x" * 6
    # A record split across reads, then the end: close_notify reads as b"".
    record = os.urandom(5000)
    await client.send_all(record)
    await trio.testing.wait_all_tasks_blocked()
    assert await read_exactly(receive, 5000) == record
    await client.aclose()
    with trio.fail_after(5):
        assert await receive(100) == b""
    await trio.aclose_forcefully(server)

    # The socket closing without close_notify is an error (the gateway's streams are not HTTPS-compatible).
    server, client, raw_client = await tls_pair(gateway_pki)
    receive = receiver(server)
    await client.send_all(b"last")
    assert await receive(100) == b"last"
    await raw_client.aclose()
    with pytest.raises(trio.BrokenResourceError):
        with trio.fail_after(5):
            await receive(100)
    await trio.aclose_forcefully(server)
    assert receiver(raw_client) == raw_client.receive_some  # not TLS: the stream's own


async def receive_after(sender: trio.SSLStream, receive, data: bytes, max_bytes: int) -> bytes:
    await sender.send_all(data)
    await trio.testing.wait_all_tasks_blocked()
    return await receive(max_bytes)
