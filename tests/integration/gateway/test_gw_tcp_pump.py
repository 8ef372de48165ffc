"""The L4 pump between two plain TCP sockets (`gateway.tcp.pump`), with `splice(2)` and without: every
byte arrives in order both ways at once, half-close is passed on, the counts are exact, and the
pipes it opened are closed when it returns (the fd count is back where it was)."""

from __future__ import annotations

import os
import socket
import threading

import pytest
import trio
import trio.testing

from gateway import splice, tcp
from tests.integration.gateway.support import settled_fds


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
    if request.param == "splice" and not splice.available():
        pytest.skip("os.splice is Linux-only")
    if request.param == "recv-send":
        monkeypatch.setattr(splice, "SPLICE", None)
    return request.param


async def test_bytes_cross_both_ways_at_once_with_half_close_and_exact_counts(pump_kind):
    baseline = settled_fds()
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
    assert settled_fds() == baseline


async def test_a_reset_endpoint_ends_the_pump_and_leaks_nothing(pump_kind):
    baseline = settled_fds()
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
    assert settled_fds() == baseline


# The splice engine (`gateway.splice`): one thread pumps every plain-socket pair of the process.


def engine_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "isthmus splice engine"]


needs_splice = pytest.mark.skipif(not splice.available(), reason="os.splice is Linux-only")


@needs_splice
async def test_many_pairs_at_once_arrive_byte_exact_and_the_engine_stops_after_the_last():
    baseline = settled_fds()

    async def one_pair(size: int) -> None:
        client, downstream = await connected_pair()
        upstream, endpoint = await connected_pair()
        request, response = os.urandom(size), os.urandom(size * 2)

        async def client_side() -> None:
            await client.send_all(request)
            await client.send_eof()
            assert await receive_all(client) == response

        async def endpoint_side() -> None:
            assert await receive_all(endpoint) == request
            await endpoint.send_all(response)
            await endpoint.send_eof()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(client_side)
            nursery.start_soon(endpoint_side)
            counts = await tcp.pump(downstream, upstream, idle_timeout_s=30)
        assert (counts.sent, counts.received) == (size, size * 2)
        for stream in (client, downstream, upstream, endpoint):
            await stream.aclose()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for index in range(12):
                nursery.start_soon(one_pair, 100_000 * (index + 1))
    assert engine_threads() == []
    assert settled_fds() == baseline


@needs_splice
async def test_a_client_that_stops_reading_holds_the_bytes_back_without_spinning_the_engine():
    client, downstream = await connected_pair()
    upstream, endpoint = await connected_pair()
    response = os.urandom(32_000_000)  # far more than the socket buffers and the pipe hold
    sent = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: tcp.pump(downstream, upstream, idle_timeout_s=30))

        async def endpoint_side() -> None:
            await endpoint.send_all(response)
            await endpoint.send_eof()
            sent.set()

        nursery.start_soon(endpoint_side)
        with trio.fail_after(10):  # the engine fills the client's buffers, then its pipe, then stops
            while not (splice._ENGINE and splice._ENGINE[0]._masks.get(upstream.socket.fileno()) == 0):
                await trio.sleep(0.01)
        wakeups = splice._ENGINE[0].wakeups
        await trio.sleep(0.2)  # an observation window, not a wait for readiness
        assert splice._ENGINE[0].wakeups - wakeups <= 2
        assert not sent.is_set()
        with trio.fail_after(30):
            assert await receive_all(client) == response
        await client.send_eof()
    for stream in (client, downstream, upstream, endpoint):
        await stream.aclose()


@needs_splice
async def test_what_an_endpoint_sent_before_hanging_up_all_arrives():
    client, downstream = await connected_pair()
    upstream, endpoint = await connected_pair()
    # The client reads nothing until the endpoint has gone: its receive buffer (128 KiB), the gateway's
    # small send buffer and the pipe (256 KiB) fill, and the rest waits in the upstream socket when
    # the hang-up is reported (the endpoint's large send buffer takes the whole answer at once).
    downstream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    endpoint.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    response = os.urandom(500_000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: tcp.pump(downstream, upstream, idle_timeout_s=30))
        await client.send_eof()  # the client has nothing to say; the endpoint answers and hangs up
        with trio.fail_after(10):
            assert await receive_all(endpoint) == b""
            await endpoint.send_all(response)
        await endpoint.aclose()
        with trio.fail_after(30):
            assert await receive_all(client) == response
    for stream in (client, downstream, upstream):
        await stream.aclose()


@needs_splice
def test_a_quiet_pair_ends_after_the_idle_timeout_counted_from_its_last_byte():
    clock = trio.testing.MockClock(autojump_threshold=0.1)

    async def main() -> None:
        client, downstream = await connected_pair()
        upstream, endpoint = await connected_pair()
        ended: list[float] = []

        async def run_pump() -> None:
            await tcp.pump(downstream, upstream, idle_timeout_s=30)
            ended.append(trio.current_time())

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_pump)
            await trio.sleep(20)
            await client.send_all(b"still here")
            assert await endpoint.receive_some(100) == b"still here"
        assert 50 <= ended[0] - start <= 61
        for stream in (client, downstream, upstream, endpoint):
            await stream.aclose()

    trio.run(main, clock=clock)
