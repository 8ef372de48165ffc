"""The link-latency relay adds its delay each way on real loopback sockets, and heals without a cut."""

from __future__ import annotations

import trio

from scenarios.relay import Delay, serve_delay_relay


async def serve_echo(task_status=trio.TASK_STATUS_IGNORED) -> None:
    async def echo(stream: trio.SocketStream) -> None:
        async for data in stream:
            await stream.send_all(data)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(echo, listeners, handler_nursery=nursery)


async def round_trip(stream: trio.SocketStream, payload: bytes) -> float:
    started = trio.current_time()
    await stream.send_all(payload)
    received = b""
    while len(received) < len(payload):
        received += await stream.receive_some()
    assert received == payload
    return trio.current_time() - started


async def test_the_relay_adds_its_delay_each_way_and_heals_in_place():
    delay = Delay(0.15)
    async with trio.open_nursery() as nursery:
        echo_port = await nursery.start(serve_echo)
        relay_port = await nursery.start(serve_delay_relay, f"127.0.0.1:{echo_port}", delay)
        stream = await trio.open_tcp_stream("127.0.0.1", relay_port)
        slow = await round_trip(stream, b"ping" * 1000)
        assert 0.3 <= slow < 1.0  # 150 ms there and 150 ms back
        delay.seconds = 0.0  # the same connection, healed
        await trio.sleep(0.01)
        fast = await round_trip(stream, b"pong")
        assert fast < 0.1
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_relay_whose_target_is_gone_closes_the_caller_instead_of_hanging():
    async with trio.open_nursery() as nursery:
        # Nothing listens on the target: the relay accepts, fails to connect, and closes.
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        dead_port = listener.socket.getsockname()[1]
        await listener.aclose()
        relay_port = await nursery.start(serve_delay_relay, f"127.0.0.1:{dead_port}", Delay(0.05))
        stream = await trio.open_tcp_stream("127.0.0.1", relay_port)
        with trio.fail_after(5):
            try:
                assert await stream.receive_some() == b""
            except trio.BrokenResourceError:
                pass  # a reset is as good as a close
        nursery.cancel_scope.cancel()
