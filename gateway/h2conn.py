"""One HTTP/2 connection driven by trio: the h2 state machine, a reader task and a writer task.

Used on both sides of the proxy: as a server for downstream connections (each request stream is
handed to a handler task) and as a client for pooled upstream connections (many concurrent
streams on one connection). What it owns:
- reading: large reads (256 KiB) fed to h2; events dispatched to per-stream state; when a lone
  exchange was handed work, its task runs before the reader re-arms its socket;
- writing: one writer task flushes everything h2 has queued once per scheduling pass, so a burst
  of frames from many streams becomes one socket write; when one exchange is all the process has in
  flight, its task sends the frames that end its stream itself (`flush_stream_end`: a task hop and
  a scheduling pass fewer on each side, and nothing to batch with anyway; a body still flowing is
  left to the writer, which gathers what arrives meanwhile); one sender at a time, each taking all
  that is queued;
- flow control both ways: received DATA is acknowledged when its consumer takes it (so a slow
  consumer stops the peer); sending waits for window and splits at the peer's frame size;
- RST_STREAM and GOAWAY: a reset stream wakes its waiters with `StreamReset`; GOAWAY stops new
  streams and fails the ones the peer did not process; idle connections are closed.

Tuned for forwarding (PERF-NOTES, `gateway.h2tuning`): header decoding to str, validation and
normalisation off in h2; a stateless HPACK encoder without Huffman coding or dynamic table; request
headers from downstream (untrusted) connections checked in one pass by `gateway.h2tuning`, a
malformed block answered with RST_STREAM(PROTOCOL_ERROR); stream counts that do not walk every
stream; a stream's h2 state dropped as soon as its exchange ends.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame
import trio

from gateway.h2tuning import (
    ForwardingDecoder,
    ForwardingEncoder,
    ForwardingH2Connection,
    MalformedHeaders,
    RequestChecks,
    check_trailers,
    silence_hpack_debug_logging,
    tune_h2_for_forwarding,
)
from gateway.net import now_sender, receiver

log = logging.getLogger("isthmus.gateway.h2")

# One read takes everything the transport has, up to this (many frames, one receive_data pass).
READ_SIZE = 262144
# Per-stream receive window: large enough that a 64 KiB body needs no WINDOW_UPDATE round trip.
STREAM_WINDOW = 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024
# Frames the peer may send us: 64 KiB bodies arrive as one DATA event instead of four.
MAX_FRAME_SIZE = 65536
# Streams a client opens before the peer's SETTINGS say how many it allows (RFC 9113 section 6.5.2
# recommends servers allow at least 100).
INITIAL_STREAM_LIMIT = 100
# Streams open in the process, over every connection, up to which a stream's task sends its own
# last frames: one exchange (its downstream and its upstream stream). With more in flight the
# writer tasks batch them (a stream alone on its connection sending its own cost ~4 % CPU per
# request at 50 streams: those writes no longer carried other streams' frames).
QUIET_STREAMS = 2


def _frame_name(frame: hyperframe.frame.Frame) -> str:
    return type(frame).__name__


# h2 formats every received frame with repr() for a trace log that is then discarded; hyperframe's
# repr (flags, payload preview) cost about 2 % of a proxied request's CPU. Frames name their class.
hyperframe.frame.Frame.__repr__ = _frame_name  # type: ignore[method-assign]
silence_hpack_debug_logging()
tune_h2_for_forwarding()

_OPEN_STATE = {True: h2.connection.ConnectionState.CLIENT_OPEN, False: h2.connection.ConnectionState.SERVER_OPEN}


class StreamReset(Exception):
    """The stream (or its connection) was reset before it finished."""

    def __init__(self, error_code: int = h2.errors.ErrorCodes.CANCEL, detail: str = "stream reset") -> None:
        super().__init__(detail)
        self.error_code = error_code


class ConnectionGone(StreamReset):
    """The connection closed (or sent GOAWAY) before the stream was processed."""


class H2Stream:
    """Receive side of one stream: headers, DATA chunks (acknowledged on take), trailers, end or reset."""

    __slots__ = ("conn", "id", "headers", "trailers", "chunks", "ended", "error", "_waiter", "cancel_scope")

    def __init__(self, conn: H2Conn, stream_id: int) -> None:
        self.conn = conn
        self.id = stream_id
        self.headers: list[tuple[bytes, bytes]] | None = None
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.chunks: collections.deque[tuple[bytes, int]] = collections.deque()
        self.ended = False
        self.error: StreamReset | None = None
        self._waiter: trio.lowlevel.Task | None = None  # the one task waiting for this stream
        self.cancel_scope: trio.CancelScope | None = None  # the handler's (server side)

    def _wake(self) -> bool:
        """Reschedule the task waiting for this stream, if any (True when there was one)."""
        task = self._waiter
        if task is None:
            return False
        self._waiter = None
        trio.lowlevel.reschedule(task)
        return True

    async def _wait(self) -> None:
        # A parked task rather than a fresh trio.Event per wait: one stream has one reader, and
        # this runs several times per proxied request.
        self._waiter = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self._waiter = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def receive_headers(self) -> list[tuple[bytes, bytes]]:
        while self.headers is None:
            if self.error is not None:
                raise self.error
            await self._wait()
        return self.headers

    async def _data_arrived(self) -> bool:
        """Wait until a DATA payload is here (True) or the stream has ended without one (False)."""
        while not self.chunks:
            if self.error is not None:
                raise self.error
            if self.ended:
                return False
            await self._wait()
        return True

    async def receive_chunk(self) -> bytes | None:
        """The next DATA payload, or None at the end of the stream."""
        if not await self._data_arrived():
            return None
        data, flow = self.chunks.popleft()
        if flow:
            self.conn.acknowledge(self.id, flow)
        return data

    async def receive_available(self) -> bytes | None:
        """Every DATA payload received so far, as one (at least one: waits for it), or None at the
        end of the stream. A relay takes a body that arrived in several frames in one piece: one
        acknowledgement and one send instead of one per frame."""
        if not await self._data_arrived():
            return None
        chunks = self.chunks
        if len(chunks) == 1:
            data, flow = chunks.popleft()
        else:
            data = b"".join([part for part, _ in chunks])
            flow = sum(part_flow for _, part_flow in chunks)
            chunks.clear()
        if flow:
            self.conn.acknowledge(self.id, flow)
        return data

    @property
    def finished(self) -> bool:
        """True when every DATA chunk has been taken and the peer ended the stream."""
        return self.ended and not self.chunks


def _configuration(client_side: bool) -> h2.config.H2Configuration:
    return h2.config.H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        split_outbound_cookies=False,
        # Checked by `check_request_headers` on the server side instead (one pass, stream error).
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
    )


class H2Conn:
    """An HTTP/2 connection over a trio stream. Call `run()` (in a nursery) to drive it."""

    process_streams = 0  # streams open over every connection of this process (see QUIET_STREAMS)

    def __init__(
        self,
        transport: trio.abc.Stream,
        *,
        client_side: bool,
        on_stream: Callable[[H2Conn, H2Stream], Awaitable[None]] | None = None,
        idle_timeout_s: float = 60.0,
        max_concurrent_streams: int = 256,
        max_header_bytes: int = 65536,
        initial_data: bytes = b"",
    ) -> None:
        self.transport = transport
        self._now = now_sender(transport)
        self._receive = receiver(transport)
        self.client_side = client_side
        self.on_stream = on_stream
        self.idle_timeout_s = idle_timeout_s
        self.h2 = ForwardingH2Connection(config=_configuration(client_side))
        # No Huffman coding and no dynamic table: they cost more CPU than the bytes they save on
        # loopback and LANs.
        self.h2.encoder = ForwardingEncoder()  # type: ignore[assignment]
        self.h2.decoder = ForwardingDecoder()
        self._request_checks = RequestChecks()
        self.h2.local_settings = h2.settings.Settings(
            client=client_side,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: max_header_bytes,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        # Settings in `local_settings` apply once acknowledged; these limits hold from the first byte.
        self.h2.max_inbound_frame_size = MAX_FRAME_SIZE
        self.h2.decoder.max_header_list_size = max_header_bytes
        self.streams: dict[int, H2Stream] = {}
        self.closed = False
        self.goaway_received = False
        self.draining = False
        self.last_activity = 0.0
        self._initial_data = initial_data
        self._write_wanted = trio.Event()
        self._window_changed = trio.Event()
        self._window_waiters = 0
        self._stream_limit = INITIAL_STREAM_LIMIT
        self._nursery: trio.Nursery | None = None
        self._done = trio.Event()
        self._sending = False  # the writer or a stream's task is in transport.send_all

    # -- life cycle -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush_soon()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._writer)
                nursery.start_soon(self._idle_watchdog)
                task_status.started()
                await self._reader()
                nursery.cancel_scope.cancel()
        finally:
            self._shutdown("connection closed")
            self._done.set()
            with trio.CancelScope(shield=True):
                # A GOAWAY (or anything else h2 queued last) goes out before the close.
                leftover = self.h2.data_to_send()
                if leftover:
                    with trio.move_on_after(1):
                        try:
                            await self.transport.send_all(leftover)
                        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                            pass
                await trio.aclose_forcefully(self.transport)

    def _shutdown(self, why: str) -> None:
        self.closed = True
        for stream in list(self.streams.values()):
            if stream.error is None and not (stream.ended and stream.headers is not None):
                stream.error = ConnectionGone(h2.errors.ErrorCodes.CANCEL, why)
            stream._wake()
        self._window_changed.set()

    def close(self) -> None:
        """Stop the connection now (its tasks are cancelled; streams fail with `ConnectionGone`)."""
        self._shutdown("connection closed by the gateway")
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def start_draining(self) -> None:
        """Send GOAWAY; the connection closes once its open streams have finished."""
        if self.draining or self.closed:
            return
        self.draining = True
        # A GOAWAY(NO_ERROR) written beside h2's state machine: h2's own close_connection() moves it
        # to CLOSED, after which the streams still in flight could not send their responses.
        goaway = hyperframe.frame.GoAwayFrame(0)
        goaway.last_stream_id = self.h2.highest_inbound_stream_id
        goaway.error_code = h2.errors.ErrorCodes.NO_ERROR
        self.h2._data_to_send += goaway.serialize()
        self.flush_soon()
        self._maybe_finish_drain()

    def _maybe_finish_drain(self) -> None:
        if self.draining and not self.streams:
            self._write_wanted.set()  # the writer closes the connection after this flush

    @property
    def usable(self) -> bool:
        """True when a new stream may be opened (client side)."""
        return not (self.closed or self.goaway_received or self.draining)

    @property
    def open_streams(self) -> int:
        return len(self.streams)

    # -- reading ----------------------------------------------------------------------------------

    async def _reader(self) -> None:
        data = self._initial_data
        self._initial_data = b""
        while True:
            if data:
                self.last_activity = trio.current_time()
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError as exc:
                    self._protocol_error(exc)
                    return
                woke = self._dispatch(events)
                self.flush_soon()
                if self.closed:
                    return
                if woke and len(data) < READ_SIZE and H2Conn.process_streams <= QUIET_STREAMS:
                    # A lone exchange (`QUIET_STREAMS`) was handed work and the read took all there
                    # was: its task runs before this one re-arms its socket, so the exchange's next
                    # send goes out first (two passes: trio runs a batch in random order). With
                    # more in flight the passes cost more than they save.
                    await trio.lowlevel.checkpoint()
                    await trio.lowlevel.checkpoint()
            try:
                data = await self._receive(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return

    async def _idle_watchdog(self) -> None:
        """Close the connection once it has had no stream and no byte for `idle_timeout_s`
        (one timer per connection rather than a cancel scope per read)."""
        self.last_activity = trio.current_time()
        while True:
            deadline = self.last_activity + self.idle_timeout_s
            if trio.current_time() < deadline:
                await trio.sleep_until(deadline)
                continue
            if self.streams:
                self.last_activity = trio.current_time()
                continue
            self.start_draining()
            return

    def _protocol_error(self, exc: h2.exceptions.ProtocolError) -> None:
        log.debug("HTTP/2 protocol error from peer: %s", exc)
        code = getattr(exc, "error_code", None) or h2.errors.ErrorCodes.PROTOCOL_ERROR
        try:
            self.h2.close_connection(error_code=code)
        except h2.exceptions.ProtocolError:
            pass
        self.closed = True
        self._shutdown(f"protocol error: {exc}")

    def _dispatch(self, events: list[h2.events.Event]) -> bool:
        """Hand each event to its stream; True if a stream's task was woken or started."""
        streams = self.streams
        woke = False
        for event in events:
            kind = type(event)
            if kind is h2.events.DataReceived:
                stream = streams.get(event.stream_id)
                if stream is None:
                    self.acknowledge(event.stream_id, event.flow_controlled_length)
                else:
                    stream.chunks.append((event.data, event.flow_controlled_length))
                    woke = stream._wake() or woke
            elif kind is h2.events.RequestReceived:
                try:
                    self._request_checks.check(event.headers)
                except MalformedHeaders as exc:
                    log.debug("malformed request headers on stream %d: %s", event.stream_id, exc)
                    self.reset(event.stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
                    continue
                stream = H2Stream(self, event.stream_id)
                stream.headers = event.headers
                if self.draining:
                    # Opened after our GOAWAY: refused, so the client may retry it elsewhere.
                    self.reset(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                    continue
                streams[event.stream_id] = stream
                H2Conn.process_streams += 1
                if self.on_stream is not None and self._nursery is not None:
                    self._nursery.start_soon(self._run_handler, stream)
                    woke = True
            elif kind is h2.events.ResponseReceived:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.headers = event.headers
                    woke = stream._wake() or woke
            elif kind is h2.events.StreamEnded:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.ended = True
                    woke = stream._wake() or woke
            elif kind is h2.events.TrailersReceived:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    if not self.client_side:
                        try:
                            check_trailers(event.headers)
                        except MalformedHeaders as exc:
                            self._malformed(stream, exc)
                            continue
                    stream.trailers = event.headers
            elif kind is h2.events.WindowUpdated:
                self._notify_window()
            elif kind is h2.events.RemoteSettingsChanged:
                self._stream_limit = self.h2.remote_settings.max_concurrent_streams
                self._notify_window()
            elif kind is h2.events.StreamReset:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.error = StreamReset(event.error_code, f"stream reset by peer ({event.error_code!r})")
                    stream._wake()
                    if stream.cancel_scope is not None:
                        # The client gave up: stop its exchange, which resets the upstream stream too.
                        stream.cancel_scope.cancel()
                self._notify_window()
            elif kind is h2.events.ConnectionTerminated:
                self.goaway_received = True
                if event.error_code == h2.errors.ErrorCodes.NO_ERROR:
                    # h2 closes its state machine on any GOAWAY; a graceful one still lets the
                    # streams at or below last_stream_id finish (RFC 9113 section 6.8).
                    self.h2.state_machine.state = _OPEN_STATE[self.client_side]
                last = event.last_stream_id if event.last_stream_id is not None else 0
                for sid, stream in list(streams.items()):
                    if sid > last and self.client_side:
                        stream.error = ConnectionGone(event.error_code, "GOAWAY: stream not processed")
                        stream._wake()
                if event.error_code != h2.errors.ErrorCodes.NO_ERROR:
                    self._shutdown(f"GOAWAY {event.error_code!r}")
                elif not streams:
                    self.closed = True
            # Other events (settings acks, pings answered by h2, priority) need nothing.
        return woke

    def _malformed(self, stream: H2Stream, exc: MalformedHeaders) -> None:
        log.debug("malformed header block on stream %d: %s", stream.id, exc)
        self.reset(stream.id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
        stream.error = StreamReset(h2.errors.ErrorCodes.PROTOCOL_ERROR, f"malformed header block: {exc}")
        stream._wake()
        if stream.cancel_scope is not None:
            stream.cancel_scope.cancel()

    async def _run_handler(self, stream: H2Stream) -> None:
        try:
            with trio.CancelScope() as stream.cancel_scope:
                await self.on_stream(self, stream)  # type: ignore[misc]
        finally:
            self.forget(stream.id)

    # -- writing ----------------------------------------------------------------------------------

    def flush_soon(self) -> None:
        """Wake the writer if h2 has bytes queued (acknowledging a small DATA frame queues none)."""
        if self.h2._data_to_send:
            self._write_wanted.set()

    async def _writer(self) -> None:
        while True:
            await self._write_wanted.wait()
            self._write_wanted = trio.Event()
            if self._sending:
                continue  # a stream's task is sending; it wakes us if more is queued when it is done
            data = self.h2.data_to_send()
            if data:
                try:
                    rest = self._send_now(data)
                except ConnectionGone:
                    return
                if rest is not None and not await self._send(rest):
                    return
            if self.draining and not self.streams:
                self.close()
                return

    async def _send(self, data: bytes) -> bool:
        """Send `data` (empty: the backlog `_send_now` left) as the connection's one sender; False
        (the connection closed) if the transport broke."""
        self._sending = True
        try:
            if data:
                await self.transport.send_all(data)
            else:
                await self._now.flush()  # type: ignore[union-attr]
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.close()
            return False
        finally:
            self._sending = False
        return True

    def _send_now(self, data: bytes) -> bytes | None:
        """Hand `data` to the transport without waiting if it can take it now (`NowSender`); what
        is left for `_send`: None when it all went out, b"" when the socket left a backlog, else
        `data` (not taken). ConnectionGone if the transport broke."""
        now = self._now
        if now is None:
            return data
        try:
            if not now.send_now(data):
                return data
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.close()
            raise ConnectionGone(h2.errors.ErrorCodes.CANCEL, "connection closed") from None
        return b"" if now.backlogged else None

    async def flush_stream_end(self) -> None:
        """Send what h2 has queued. Called by a stream's task after queuing the frames that end its
        stream: when its exchange is the only one in flight in the process (`QUIET_STREAMS`) and
        nobody is sending, the task sends them itself; otherwise the writer is woken. The send is
        shielded: cancelled half-way it would leave a partial frame on a connection other streams
        may be using by then (a blocked send still ends when the connection closes); a send the
        socket takes at once (`gateway.net.NowSender`) needs no shield."""
        if self._sending or H2Conn.process_streams > QUIET_STREAMS or self.closed:
            self.flush_soon()
            return
        data = self.h2.data_to_send()
        if not data:
            return
        rest = self._send_now(data)
        if rest is not None:
            with trio.CancelScope(shield=True):
                sent = await self._send(rest)
            if not sent:
                raise ConnectionGone(h2.errors.ErrorCodes.CANCEL, "connection closed")
        self.flush_soon()  # what other streams queued meanwhile
        self._maybe_finish_drain()

    def acknowledge(self, stream_id: int, flow: int) -> None:
        if self.closed:
            return
        try:
            self.h2.acknowledge_received_data(flow, stream_id)
        except h2.exceptions.ProtocolError:
            return
        self.flush_soon()

    # -- streams ----------------------------------------------------------------------------------

    async def open_stream(self, headers: list[tuple[bytes, bytes]], *, end_stream: bool) -> H2Stream:
        """Open a client stream and send its headers (waits while the peer's stream limit is reached)."""
        while True:
            if not self.usable:
                raise ConnectionGone(h2.errors.ErrorCodes.REFUSED_STREAM, "connection not usable")
            # Our own count, against the peer's limit (or, until its SETTINGS arrive, RFC 9113's
            # recommended minimum, so a burst on a new connection does not overrun a smaller limit).
            if len(self.streams) < self._stream_limit:
                break
            await self._wait_window()
        try:
            stream_id = self.h2.get_next_available_stream_id()
            self.h2.send_headers(stream_id, headers, end_stream=end_stream)
        except h2.exceptions.NoAvailableStreamIDError:
            self.goaway_received = True
            raise ConnectionGone(h2.errors.ErrorCodes.REFUSED_STREAM, "stream ids exhausted") from None
        stream = H2Stream(self, stream_id)
        self.streams[stream_id] = stream
        H2Conn.process_streams += 1
        if end_stream:
            await self.flush_stream_end()
        else:
            self.flush_soon()
        return stream

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], *, end_stream: bool = False) -> None:
        """Queue a HEADERS block (response head or trailers) and wake the writer."""
        self.queue_headers(stream_id, headers, end_stream=end_stream)
        self.flush_soon()

    def queue_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], *, end_stream: bool = False) -> None:
        """Queue a HEADERS block only: the caller has it sent (`flush_soon`, `flush_stream_end`, or
        with the DATA it queues next)."""
        try:
            self.h2.send_headers(stream_id, headers, end_stream=end_stream)
        except h2.exceptions.StreamClosedError:
            raise StreamReset(h2.errors.ErrorCodes.STREAM_CLOSED, "stream closed") from None
        except h2.exceptions.ProtocolError as exc:
            raise StreamReset(h2.errors.ErrorCodes.PROTOCOL_ERROR, str(exc)) from None

    async def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        """Send `data`, waiting for flow-control window as needed; `end_stream` on the last frame."""
        h2conn = self.h2
        sent = 0
        total = len(data)
        if not total:
            self._queue_frames(stream_id, b"", end_stream)
        while sent < total:
            try:
                window = h2conn.local_flow_control_window(stream_id)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                raise StreamReset(h2.errors.ErrorCodes.STREAM_CLOSED, "stream closed") from None
            if window <= 0:
                if self.closed:
                    raise ConnectionGone(h2.errors.ErrorCodes.CANCEL, "connection closed")
                self.flush_soon()  # what fitted goes out while we wait for the peer's WINDOW_UPDATE
                await self._wait_window()
                continue
            n = min(window, total - sent)
            chunk = data if n == total else data[sent : sent + n]
            sent += n
            self._queue_frames(stream_id, chunk, end_stream and sent == total)
        if end_stream:
            await self.flush_stream_end()
        else:
            self.flush_soon()

    def _queue_frames(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """`data` (within the window) as DATA frames of the peer's frame size, in one call."""
        if self.closed:
            raise ConnectionGone(h2.errors.ErrorCodes.CANCEL, "connection closed")
        try:
            self.h2.send_data_run(stream_id, data, end_stream)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            raise StreamReset(h2.errors.ErrorCodes.STREAM_CLOSED, "stream closed") from None

    def reset(self, stream_id: int, error_code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        if self.closed:
            return
        try:
            self.h2.reset_stream(stream_id, error_code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self.flush_soon()

    def forget(self, stream_id: int) -> None:
        """The stream's owner is done with it: reset it if still open, and drop its state."""
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        H2Conn.process_streams -= 1
        if not self.closed:
            h2_stream = self.h2.streams.get(stream_id)
            if h2_stream is not None and not h2_stream.closed:
                self.reset(stream_id, h2.errors.ErrorCodes.CANCEL if self.client_side else h2.errors.ErrorCodes.NO_ERROR)
            # Hand back window for data that arrived but was never taken.
            if stream.chunks:
                unread = sum(flow for _, flow in stream.chunks)
                if unread:
                    self.acknowledge(stream_id, unread)
            self.h2.reap(stream_id)
        if self.goaway_received and not self.streams:
            self.close()
        self._maybe_finish_drain()
        self._notify_window()

    def _notify_window(self) -> None:
        """Wake the tasks waiting for flow-control window or a free stream slot (if any)."""
        if self._window_waiters and not self.closed:
            self._window_changed.set()
            self._window_changed = trio.Event()

    async def _wait_window(self) -> None:
        event = self._window_changed
        self._window_waiters += 1
        try:
            await event.wait()
        finally:
            self._window_waiters -= 1
