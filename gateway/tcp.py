"""L4: pump bytes both ways between two streams until both directions end or the pair idles out.

Used for `passthrough` services (the TLS bytes as they came, routed on SNI), TCP services behind a
terminated east-west connection (routed on SNI), and outbound TCP ports. Half-close is passed on
where the stream supports it (`send_eof`); idleness is measured across both directions.

Between two plain TCP sockets (passthrough, outbound TCP to a local endpoint) the bytes never enter
Python on Linux: the pair goes to the run's splice engine (`gateway.splice`), which moves them
socket -> pipe -> socket inside the kernel for every pair from one task. Elsewhere plain sockets
are called directly (`_one_way_raw`); streams that are not plain sockets (TLS) go through trio's
stream API.
"""

from __future__ import annotations

import socket

import attrs
import trio

from gateway import splice
from gateway.net import YIELD_EVERY, SocketIO

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


# Between two plain TCP sockets the pump calls the non-blocking socket directly and, as `SocketIO`
# does, yields to trio once per `YIELD_EVERY` transfers (and whenever a socket would block): the
# per-call checkpoint of SocketStream cost about 10 % of a small-message pump (PERF-NOTES).


def _raw_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """The stdlib socket under a plain TCP stream (None for TLS and other streams)."""
    if type(stream) is SocketIO:
        return stream.raw
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
    splice.shut_write(dst)


async def _pump_spliced(down: socket.socket, up: socket.socket, counts: PumpCounts, idle_timeout_s: float) -> None:
    """Hand the pair to the splice engine and wait for both directions to end (or idleness)."""
    token = trio.lowlevel.current_trio_token()
    finished = trio.Event()
    engine, pair = splice.add(down, up, lambda: token.run_sync_soon(finished.set))
    try:
        # The engine's thread has no trio clock: idleness is the byte counts standing still, looked
        # at every eighth of the timeout on this run's clock.
        seen, seen_at = 0, trio.current_time()
        while True:
            with trio.move_on_after(idle_timeout_s / 8):
                await finished.wait()
                return
            moved, now = pair.up.moved + pair.down.moved, trio.current_time()
            if moved != seen:
                seen, seen_at = moved, now
            elif now - seen_at >= idle_timeout_s:
                return  # not a byte either way for the idle timeout
    finally:
        splice.remove(engine, pair)
        counts.sent += pair.up.moved
        counts.received += pair.down.moved


async def pump(downstream: trio.abc.Stream, upstream: trio.abc.Stream, *, idle_timeout_s: float,
               initial: bytes = b"") -> PumpCounts:
    """Relay until both directions have ended (or `idle_timeout_s` passes with no byte either way)."""
    counts = PumpCounts()
    touch = [trio.current_time()]
    if initial:
        counts.sent += len(initial)
        await upstream.send_all(initial)
    raw_down, raw_up = _raw_socket(downstream), _raw_socket(upstream)
    if raw_down is not None and raw_up is not None and splice.available():
        await _pump_spliced(raw_down, raw_up, counts, idle_timeout_s)
        return counts
    async with trio.open_nursery() as nursery:

        async def both() -> None:
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
