"""L4: pump bytes both ways between two streams until both directions end or the pair idles out.

Used for `passthrough` services (the TLS bytes as they came, routed on SNI), TCP services behind a
terminated east-west connection (routed on SNI), and outbound TCP ports. Half-close is passed on
where the stream supports it (`send_eof`); idleness is measured across both directions.
"""

from __future__ import annotations

import socket

import attrs
import trio

READ_SIZE = 65536


@attrs.define
class PumpCounts:
    sent: int = 0  # downstream -> upstream
    received: int = 0  # upstream -> downstream


async def _one_way(src: trio.abc.Stream, dst: trio.abc.Stream, counts: PumpCounts, upstream_bound: bool,
                   touch: list[float], scope: trio.CancelScope) -> None:
    try:
        while True:
            data = await src.receive_some(READ_SIZE)
            if not data:
                break
            touch[0] = trio.current_time()
            if upstream_bound:
                counts.sent += len(data)
            else:
                counts.received += len(data)
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    send_eof = getattr(dst, "send_eof", None)
    if send_eof is None:
        # TLS has no half-close: the first direction to end ends the pair.
        scope.cancel()
        return
    try:
        await send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


# Between two plain TCP sockets the pump calls the non-blocking socket directly and yields to
# trio once per this many transfers (and whenever a socket would block): the per-call checkpoint
# of SocketStream cost about 10 % of a small-message pump (PERF-NOTES).
YIELD_EVERY = 16


def _raw_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """The stdlib socket under a plain `trio.SocketStream` (None for TLS and other streams)."""
    if type(stream) is not trio.SocketStream:
        return None
    raw = getattr(stream.socket, "_sock", None)
    return raw if isinstance(raw, socket.socket) else None


async def _one_way_raw(src: socket.socket, dst: socket.socket, counts: PumpCounts, upstream_bound: bool,
                       touch: list[float]) -> None:
    recv, send = src.recv, dst.send
    transfers = 0
    try:
        while True:
            try:
                data = recv(READ_SIZE)
            except BlockingIOError:
                transfers = 0
                await trio.lowlevel.wait_readable(src)
                continue
            if not data:
                break
            touch[0] = trio.current_time()
            if upstream_bound:
                counts.sent += len(data)
            else:
                counts.received += len(data)
            view = memoryview(data)
            while view:
                try:
                    view = view[send(view):]
                except BlockingIOError:
                    transfers = 0
                    await trio.lowlevel.wait_writable(dst)
            transfers += 1
            if transfers >= YIELD_EVERY:
                transfers = 0
                await trio.lowlevel.checkpoint()
    except OSError:  # reset or broken pipe: this direction is over
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


async def pump(downstream: trio.abc.Stream, upstream: trio.abc.Stream, *, idle_timeout_s: float,
               initial: bytes = b"") -> PumpCounts:
    """Relay until both directions have ended (or `idle_timeout_s` passes with no byte either way)."""
    counts = PumpCounts()
    touch = [trio.current_time()]
    if initial:
        counts.sent += len(initial)
        await upstream.send_all(initial)
    async with trio.open_nursery() as nursery:

        async def both() -> None:
            raw_down, raw_up = _raw_socket(downstream), _raw_socket(upstream)
            async with trio.open_nursery() as inner:
                if raw_down is not None and raw_up is not None:
                    inner.start_soon(_one_way_raw, raw_down, raw_up, counts, True, touch)
                    inner.start_soon(_one_way_raw, raw_up, raw_down, counts, False, touch)
                else:
                    inner.start_soon(_one_way, downstream, upstream, counts, True, touch, nursery.cancel_scope)
                    inner.start_soon(_one_way, upstream, downstream, counts, False, touch, nursery.cancel_scope)
            nursery.cancel_scope.cancel()

        async def watchdog() -> None:
            while True:
                await trio.sleep_until(touch[0] + idle_timeout_s)
                if trio.current_time() >= touch[0] + idle_timeout_s:
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(both)
        nursery.start_soon(watchdog)
    return counts
