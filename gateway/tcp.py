"""L4: pump bytes both ways between two streams until both directions end or the pair idles out.

Used for `passthrough` services (the TLS bytes as they came, routed on SNI), TCP services behind a
terminated east-west connection (routed on SNI), and outbound TCP ports. Half-close is passed on
where the stream supports it (`send_eof`); idleness is measured across both directions.

Between two plain TCP sockets (passthrough, outbound TCP to a local endpoint) the bytes never enter
Python on Linux: `splice(2)` moves them socket -> pipe -> socket inside the kernel, one pipe per
direction, so a 64 KiB response costs no user-space copy and no `bytes` object. Elsewhere the
sockets are called directly (`_one_way_raw`); streams that are not plain sockets (TLS) go through
trio's stream API.
"""

from __future__ import annotations

import os
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
    _shut_write(dst)


def _shut_write(sock: socket.socket) -> None:
    """Pass this direction's end on (half-close); the peer may still be sending the other way."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


SPLICE = getattr(os, "splice", None)  # Linux, Python 3.10+
SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
PIPE_SIZE = 262144  # the kernel's cap for an unprivileged pipe is 1 MiB; 256 KiB moves a 64 KiB body in one call


def _open_pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        import fcntl

        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except (ImportError, AttributeError, OSError):  # an older kernel or a lower cap: 64 KiB still works
        pass
    return read_end, write_end


async def _one_way_splice(src: socket.socket, dst: socket.socket, counts: PumpCounts, upstream_bound: bool,
                          touch: list[float]) -> None:
    """Like `_one_way_raw`, with the bytes moved by `splice(2)` through a pipe of this direction's own."""
    assert SPLICE is not None
    src_fd, dst_fd = src.fileno(), dst.fileno()
    read_end, write_end = _open_pipe()
    try:
        while True:
            try:
                moved = SPLICE(src_fd, write_end, PIPE_SIZE, flags=SPLICE_FLAGS)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(src)
                continue
            if not moved:
                break
            drained = moved < PIPE_SIZE  # the socket had no more: wait before asking again (no EAGAIN round)
            touch[0] = trio.current_time()
            if upstream_bound:
                counts.sent += moved
            else:
                counts.received += moved
            while moved:
                try:
                    moved -= SPLICE(read_end, dst_fd, moved, flags=SPLICE_FLAGS)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(dst)
            if drained:
                await trio.lowlevel.wait_readable(src)
            else:  # a full pipe's worth: let other tasks run before the next one
                await trio.lowlevel.checkpoint()
    except OSError:  # reset or broken pipe: this direction is over
        pass
    finally:
        os.close(read_end)
        os.close(write_end)
    _shut_write(dst)


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
                    one_way = _one_way_splice if SPLICE is not None else _one_way_raw
                    inner.start_soon(one_way, raw_down, raw_up, counts, True, touch)
                    inner.start_soon(one_way, raw_up, raw_down, counts, False, touch)
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
