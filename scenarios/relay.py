"""A latency-adding TCP relay for the `link-latency` fault (trio; knows nothing of TLS or HTTP).

`serve_delay_relay(target, delay)` listens on a free port of 127.0.0.1, connects every accepted
stream to `target` (`host:port`), and forwards bytes both ways, each chunk `delay.seconds` after it was
read. `delay` may change while the relay runs: setting it to 0 heals the link without cutting the
connections open through it.
Delivery is pipelined (a chunk read at t leaves at t + delay, whatever is queued before it), so the
link keeps its throughput and only gains latency, the way `tc netem delay` would. A half-close is
passed on after the same delay. Mutual TLS between the two gateways runs through it untouched.

Imports trio only; never `gateway` or `federation`.
"""

from __future__ import annotations

import math

import attrs
import trio

CHUNK_BYTES = 64 * 1024
CONNECT_TIMEOUT_S = 5.0


@attrs.define
class Delay:
    """The delay a relay adds each way, in seconds (read for every chunk)."""

    seconds: float


async def _pump(source: trio.abc.ReceiveStream, sink: trio.SocketStream, delay: Delay) -> None:
    """Copy `source` to `sink`, each chunk `delay.seconds` after it arrived; EOF becomes a delayed half-close."""
    send, receive = trio.open_memory_channel[tuple[float, bytes]](math.inf)

    async def read() -> None:
        async with send:
            while True:
                try:
                    data = await source.receive_some(CHUNK_BYTES)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                await send.send((trio.current_time() + delay.seconds, data))
                if not data:
                    return

    async def write() -> None:
        async with receive:
            async for due, data in receive:
                await trio.sleep_until(due)
                if not data:
                    try:
                        await sink.send_eof()
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass
                    return
                await sink.send_all(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        nursery.start_soon(write)


async def _relay_one(downstream: trio.SocketStream, target: tuple[str, int], delay: Delay) -> None:
    try:
        with trio.fail_after(CONNECT_TIMEOUT_S):
            upstream = await trio.open_tcp_stream(*target)
    except (OSError, trio.TooSlowError):
        await trio.aclose_forcefully(downstream)
        return
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pump, downstream, upstream, delay)
            nursery.start_soon(_pump, upstream, downstream, delay)
    except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # one side went away: the other is closed below, as a cut link would be
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(upstream)
            await trio.aclose_forcefully(downstream)


async def serve_delay_relay(
    target: str, delay: Delay, *, host: str = "127.0.0.1", task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Relay connections to `target` with `delay` added each way; `task_status.started(port)`; never returns."""
    target_host, _, target_port = target.rpartition(":")
    listeners = await trio.open_tcp_listeners(0, host=host)
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        task_status.started(port)
        await trio.serve_listeners(
            lambda stream: _relay_one(stream, (target_host, int(target_port)), delay), listeners,
            handler_nursery=nursery,
        )
