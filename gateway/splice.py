"""The splice engine: every plain-socket TCP pair this process relays, pumped by one thread.

Owns: the process's `epoll` set holding both sockets of every spliced pair, the per-direction
state (a pipe of its own, the bytes waiting in it, end of input), and the one thread that moves
bytes with `splice(2)` (socket -> pipe -> socket inside the kernel) for every socket the kernel
reports ready. Used by `gateway.tcp.pump` for passthrough and outbound TCP when both ends are
plain sockets on Linux.

Why a thread of its own: on trio's loop each socket event of a byte pump costs a pass of the
scheduler, a task switch and an `epoll_ctl` to re-arm the socket (trio's registrations are
one-shot), about three times what the two `splice` calls cost. Here the sockets stay registered
(level-triggered) for the pair's life and the thread sleeps in `epoll_wait`, so an event costs the
wakeup, the splices and a few lines of Python, and the kernel wakes the thread straight from the
socket. The bytes never need the event loop; only a pair's end is handed back to trio
(`notify`, through the run's token). A socket's read interest is dropped while its direction
waits for the other socket to take bytes (backpressure), and write interest is asked only then,
so a ready socket that cannot make progress never spins the thread.

The interpreter lock: the thread needs it for a few lines per event. When L7 work keeps the main
thread busy, the thread waits for the lock at most the interpreter's switch interval, which the
engine lowers to `SWITCH_INTERVAL_S` while it runs.

A direction ends at end of input (passed on with `shutdown(SHUT_WR)`, half-close) or at the first
error on either of its sockets; the pair is finished when both directions have ended. Idle
timeouts and cancellation belong to the caller (`gateway.tcp.pump`), which removes the pair before
it closes the sockets. The engine starts with the first pair and stops, its thread joined and its
descriptors closed, when the last pair is removed: an idle gateway holds neither.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import threading
from collections.abc import Callable

import attrs

SPLICE = getattr(os, "splice", None)  # Linux, Python 3.10+
SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
PIPE_SIZE = 262144  # the kernel's cap for an unprivileged pipe is 1 MiB; 256 KiB moves a 64 KiB body in one call
MAX_EVENTS = 256
SWITCH_INTERVAL_S = 0.001  # the longest the engine waits for the interpreter lock (the default is 5 ms)

IN = select.EPOLLIN | select.EPOLLRDHUP
OUT = select.EPOLLOUT
GONE = select.EPOLLERR | select.EPOLLHUP


def available() -> bool:
    return SPLICE is not None


def _open_pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        import fcntl

        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except (ImportError, AttributeError, OSError):  # an older kernel or a lower cap: 64 KiB still works
        pass
    return read_end, write_end


def shut_write(sock: socket.socket) -> None:
    """Pass a direction's end on (half-close); the peer may still be sending the other way."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


@attrs.define(eq=False)
class Direction:
    """Bytes from `src` to `dst` through this direction's own pipe."""

    src: socket.socket
    dst: socket.socket
    read_end: int
    write_end: int
    src_fd: int = attrs.field(default=attrs.Factory(lambda self: self.src.fileno(), takes_self=True))
    dst_fd: int = attrs.field(default=attrs.Factory(lambda self: self.dst.fileno(), takes_self=True))
    pending: int = 0  # bytes in the pipe not yet taken by dst
    moved: int = 0  # bytes taken from src so far
    eof: bool = False  # src has ended (or failed)
    hung_up: bool = False  # src hung up: what it holds is all that will come
    done: bool = False

    @property
    def blocked(self) -> bool:
        """Waiting for dst to take the pipe's bytes (read interest on src is off meanwhile)."""
        return self.pending > 0 and not self.done

    def flush(self) -> bool:
        """Move the pipe's bytes to dst; False if dst would block (or the direction ended)."""
        while self.pending:
            try:
                self.pending -= SPLICE(self.read_end, self.dst_fd, self.pending, None, None, SPLICE_FLAGS)
            except BlockingIOError:
                return False
            except OSError:
                self.finish()
                return False
        if self.eof:
            self.finish()
            return False
        return True

    def read(self) -> None:
        """Take what src has into the pipe and pass it on. After a hang-up (no event will come for
        src again) it keeps going until src is empty or dst would block."""
        while not self.done and not self.pending:
            try:
                got = SPLICE(self.src_fd, self.write_end, PIPE_SIZE, None, None, SPLICE_FLAGS)
            except BlockingIOError:
                break
            except OSError:
                self.finish()
                break
            if not got:
                self.eof = True
            self.pending += got
            self.moved += got
            self.flush()
            if not self.hung_up:
                break

    def finish(self) -> None:
        if not self.done:
            self.done = True
            self.pending = 0
            shut_write(self.dst)


@attrs.define(eq=False)
class SplicedPair:
    """Both directions of one relayed connection."""

    up: Direction  # downstream -> upstream
    down: Direction  # upstream -> downstream
    fds: tuple[int, int]  # downstream's, upstream's (kept: the caller may close the sockets first)
    notify: Callable[[], None]  # called once, from the engine's thread, when both directions have ended
    settled: bool = True  # both sockets' interest is plain read (no direction waiting or ended)

    @property
    def done(self) -> bool:
        return self.up.done and self.down.done

    def fail(self) -> None:
        self.up.finish()
        self.down.finish()


class SpliceEngine:
    """The process's epoll set of spliced sockets and the thread that serves it (see the module docstring)."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        # fd -> (the pair, the direction reading from it, the direction writing to it)
        self._sockets: dict[int, tuple[SplicedPair, Direction, Direction]] = {}
        self._masks: dict[int, int] = {}  # fds still registered, with their interest
        self._lock = threading.Lock()  # the pairs' state: the engine's thread vs add/remove
        self._stopping = False
        self.wakeups = 0  # batches served (tests check that a waiting pair does not spin)
        self._thread = threading.Thread(target=self._run, name="isthmus splice engine", daemon=True)
        self._thread.start()

    def add(self, downstream: socket.socket, upstream: socket.socket, notify: Callable[[], None]) -> SplicedPair:
        pipes: list[int] = []
        try:
            pipes += _open_pipe()
            pipes += _open_pipe()
        except OSError:
            for fd in pipes:
                os.close(fd)
            raise
        up = Direction(downstream, upstream, pipes[0], pipes[1])
        down = Direction(upstream, downstream, pipes[2], pipes[3])
        pair = SplicedPair(up, down, (downstream.fileno(), upstream.fileno()), notify)
        with self._lock:
            self._sockets[pair.fds[0]] = (pair, up, down)
            self._sockets[pair.fds[1]] = (pair, down, up)
            for fd in pair.fds:
                self._masks[fd] = IN
                self._epoll.register(fd, IN)
        return pair

    def remove(self, pair: SplicedPair) -> bool:
        """Forget the pair and close its pipes; True if it was the last (the engine has stopped)."""
        with self._lock:
            for fd in pair.fds:
                self._unregister(fd)
                self._sockets.pop(fd, None)
            for direction in (pair.up, pair.down):
                for pipe_fd in (direction.read_end, direction.write_end):
                    try:
                        os.close(pipe_fd)
                    except OSError:
                        pass
            if self._sockets:
                return False
            self._stopping = True
        os.write(self._wake_w, b"x")
        self._thread.join()
        os.close(self._wake_r)
        os.close(self._wake_w)
        return True

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    def _unregister(self, fd: int) -> None:
        if self._masks.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    def _run(self) -> None:
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(switch_interval, SWITCH_INTERVAL_S))
        try:
            while True:
                events = self._epoll.poll(-1, MAX_EVENTS)
                with self._lock:
                    if self._stopping:
                        return
                    self.serve_ready(events)
        finally:
            sys.setswitchinterval(switch_interval)
            self._epoll.close()

    def serve_ready(self, events: list[tuple[int, int]]) -> None:
        """Serve one batch of ready sockets (the engine's lock held)."""
        self.wakeups += 1
        for fd, flags in events:
            entry = self._sockets.get(fd)
            if entry is None:
                continue
            pair, reading, writing = entry
            try:
                if writing.pending and writing.flush():
                    writing.read()  # room again: resume the direction that waited
                reading.read()
                if flags & GONE:
                    self._gone(fd, flags, reading, writing)
            except Exception:  # never let one pair stop the engine (and with it the gateway)
                pair.fail()
            if pair.settled and not (reading.pending or writing.pending or reading.eof or writing.eof
                                     or reading.done or writing.done):
                continue  # the common case: bytes passed straight through, interest unchanged
            if pair.done:
                for pair_fd in pair.fds:
                    self._unregister(pair_fd)
                try:
                    pair.notify()
                except Exception:  # the caller's trio run has ended: nobody is waiting
                    pass
            else:
                self._update(pair)

    def _gone(self, fd: int, flags: int, reading: Direction, writing: Direction) -> None:
        """The socket reported an error or a hang-up. The kernel reports that on every poll
        whatever the interest, so the socket leaves the set; nothing more can reach it, and after
        a hang-up (no error) what it still holds is read out as the other socket takes it."""
        self._unregister(fd)
        writing.finish()
        if flags & select.EPOLLERR:
            reading.finish()
        else:
            reading.hung_up = True
            reading.read()

    def _update(self, pair: SplicedPair) -> None:
        """Interest per socket: read unless its direction waits or ended; write while the other waits."""
        settled = True
        for fd, reading, writing in ((pair.fds[0], pair.up, pair.down), (pair.fds[1], pair.down, pair.up)):
            mask = (0 if reading.done or reading.eof or reading.blocked else IN) | (OUT if writing.blocked else 0)
            current = self._masks.get(fd)
            settled = settled and mask == IN and current is not None
            if current is not None and current != mask:
                self._masks[fd] = mask
                self._epoll.modify(fd, mask)
        pair.settled = settled


_ENGINE: list[SpliceEngine] = []  # the running engine, if any
_ENGINE_LOCK = threading.Lock()


def add(downstream: socket.socket, upstream: socket.socket,
        notify: Callable[[], None]) -> tuple[SpliceEngine, SplicedPair]:
    """Give a pair to the running engine (started if none is)."""
    with _ENGINE_LOCK:
        if not _ENGINE or not _ENGINE[0].running:
            _ENGINE[:] = [SpliceEngine()]
        engine = _ENGINE[0]
        return engine, engine.add(downstream, upstream, notify)


def remove(engine: SpliceEngine, pair: SplicedPair) -> None:
    """Take the pair back (its pipes closed); the engine stops with its last pair."""
    with _ENGINE_LOCK:
        if engine.remove(pair) and _ENGINE and _ENGINE[0] is engine:
            _ENGINE.clear()
