"""`gateway.h2conn.H2Conn` with the forwarding tunings, driven by a plain h2 client over an
in-memory stream: a malformed request costs only its own stream, finished streams leave no state
behind, and the advertised stream limit still holds."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import trio
import trio.testing

from gateway.h2conn import H2Conn, H2Stream, StreamReset

REQUEST = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"echo.demo"), (b":path", b"/")]


class IgnoresStreamLimit(h2.connection.H2Connection):
    """An h2 client that opens streams beyond the server's MAX_CONCURRENT_STREAMS."""

    @property
    def open_outbound_streams(self) -> int:
        return 0


class Client:
    """A bare h2 client over one end of a memory stream pair."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        # Sends what it is told: no outbound normalisation or validation (it plays a hostile client).
        self.h2 = IgnoresStreamLimit(h2.config.H2Configuration(
            client_side=True, header_encoding=None, normalize_outbound_headers=False, validate_outbound_headers=False))
        self.events: list[h2.events.Event] = []

    async def start(self) -> None:
        self.h2.initiate_connection()
        await self.flush()

    async def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            await self.stream.send_all(data)

    async def pump_until(self, done) -> None:
        with trio.fail_after(5):
            while not done():
                data = await self.stream.receive_some(65536)
                assert data, "the gateway closed the connection"
                self.events += self.h2.receive_data(data)
                await self.flush()

    def ended(self, stream_id: int) -> bool:
        return any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) and e.stream_id == stream_id
                   for e in self.events)

    def of(self, kind, stream_id: int):
        return [e for e in self.events if isinstance(e, kind) and e.stream_id == stream_id]


async def answer(conn: H2Conn, stream: H2Stream) -> None:
    try:
        while await stream.receive_chunk() is not None:
            pass
    except StreamReset:
        return  # the request was reset (by the client, or for a malformed block)
    conn.send_headers(stream.id, [(b":status", b"200"), (b"x-path", dict(stream.headers)[b":path"])])
    await conn.send_data(stream.id, b"hello", end_stream=True)


async def serve(nursery: trio.Nursery, **kwargs) -> tuple[Client, H2Conn]:
    ours, theirs = trio.testing.memory_stream_pair()
    conn = H2Conn(theirs, client_side=False, on_stream=answer, **kwargs)
    nursery.start_soon(conn.run)
    client = Client(ours)
    await client.start()
    return client, conn


async def test_a_malformed_request_is_reset_and_its_neighbours_are_served():
    async with trio.open_nursery() as nursery:
        client, conn = await serve(nursery)
        client.h2.send_headers(1, REQUEST, end_stream=True)
        client.h2.send_headers(3, REQUEST + [(b"x-a", b"1\r\nx-injected: 1")], end_stream=True)
        client.h2.send_headers(5, REQUEST + [(b"connection", b"close")], end_stream=True)
        client.h2.send_headers(7, [(b":method", b"GET"), (b":path", b"/7"), (b":authority", b"echo.demo"),
                                   (b":scheme", b"https")], end_stream=True)
        await client.flush()
        await client.pump_until(lambda: all(client.ended(s) for s in (1, 3, 5, 7)))
        for bad in (3, 5):
            (reset,) = client.of(h2.events.StreamReset, bad)
            assert reset.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
        for good, path in ((1, b"/"), (7, b"/7")):
            (response,) = client.of(h2.events.ResponseReceived, good)
            assert (b":status", b"200") in response.headers and (b"x-path", path) in response.headers
            assert b"".join(e.data for e in client.of(h2.events.DataReceived, good)) == b"hello"
        assert not conn.closed
        nursery.cancel_scope.cancel()


async def test_malformed_trailers_reset_the_stream():
    async with trio.open_nursery() as nursery:
        client, _ = await serve(nursery)
        client.h2.send_headers(1, [(b":method", b"POST"), *REQUEST[1:]])
        client.h2.send_data(1, b"body")
        client.h2.send_headers(1, [(b":status", b"200")], end_stream=True)  # a pseudo-header in trailers
        await client.flush()
        await client.pump_until(lambda: client.ended(1))
        (reset,) = client.of(h2.events.StreamReset, 1)
        assert reset.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
        nursery.cancel_scope.cancel()


async def test_finished_streams_leave_no_state_and_the_stream_limit_holds():
    async with trio.open_nursery() as nursery:
        client, conn = await serve(nursery, max_concurrent_streams=4)
        await client.pump_until(lambda: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in client.events))
        stream_id = 1
        for _ in range(30):  # 120 sequential requests, 4 at a time
            batch = []
            for _ in range(4):
                client.h2.send_headers(stream_id, REQUEST, end_stream=True)
                batch.append(stream_id)
                stream_id += 2
            await client.flush()
            await client.pump_until(lambda b=batch: all(client.ended(s) for s in b))
        assert all(client.of(h2.events.ResponseReceived, s) for s in range(1, stream_id, 2))
        assert len(conn.h2.streams) <= 4  # h2's state for finished streams was dropped
        assert not conn.streams

        # A fifth concurrent stream beyond the advertised 4 breaks h2's limit: the connection ends
        # with GOAWAY (h2 treats it as a connection error), counted exactly despite the cheap count.
        held = trio.Event()

        async def hold(c: H2Conn, stream: H2Stream) -> None:
            await held.wait()

        conn.on_stream = hold
        for _ in range(4):
            client.h2.send_headers(stream_id, REQUEST, end_stream=True)
            stream_id += 2
        await client.flush()
        await trio.testing.wait_all_tasks_blocked()
        assert len(conn.streams) == 4 and not conn.closed
        client.h2.send_headers(stream_id, REQUEST, end_stream=True)
        await client.flush()
        with trio.fail_after(5):
            while not any(isinstance(e, h2.events.ConnectionTerminated) for e in client.events):
                data = await client.stream.receive_some(65536)
                assert data
                client.events += client.h2.receive_data(data)
        goaway = next(e for e in client.events if isinstance(e, h2.events.ConnectionTerminated))
        assert goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
        held.set()
        nursery.cancel_scope.cancel()


async def test_a_client_connection_carries_many_sequential_streams():
    a, b = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        server = H2Conn(b, client_side=False, on_stream=answer, max_concurrent_streams=2)
        client = H2Conn(a, client_side=True)
        nursery.start_soon(server.run)
        await nursery.start(client.run)

        async def one(i: int) -> None:
            stream = await client.open_stream([*REQUEST[:3], (b":path", f"/{i}".encode())], end_stream=True)
            headers = await stream.receive_headers()
            assert (b"x-path", f"/{i}".encode()) in headers
            assert await stream.receive_chunk() == b"hello"
            assert await stream.receive_chunk() is None
            client.forget(stream.id)

        await one(0)  # the server's SETTINGS (2 streams at a time) have arrived by its end
        async with trio.open_nursery() as requests:
            for i in range(1, 41):
                requests.start_soon(one, i)
        assert len(client.h2.streams) <= 2 and not client.streams
        nursery.cancel_scope.cancel()


def test_h2s_state_machine_tables_hash_their_keys_in_c_and_still_find_every_transition():
    import itertools

    import h2.stream

    machines = [
        (h2.stream._transitions, h2.stream.StreamState, h2.stream.StreamInputs),
        (h2.connection.H2ConnectionStateMachine._transitions, h2.connection.ConnectionState,
         h2.connection.ConnectionInputs),
    ]
    for table, states, inputs in machines:
        assert inputs.__hash__ is object.__hash__
        # Looked up by (state, input) pairs built here, as the state machines do: a table whose keys
        # kept their old hashes would find none of them.
        found = [pair for pair in itertools.product(states, inputs) if pair in table]
        assert len(found) == len(table) > 10
    machine = h2.connection.H2ConnectionStateMachine()
    machine.process_input(h2.connection.ConnectionInputs.SEND_HEADERS)
    assert machine.state is h2.connection.ConnectionState.CLIENT_OPEN


class LoggedStream(trio.abc.Stream):
    """A transport that logs when its reader asks for bytes and when it gets them."""

    def __init__(self, inner: trio.abc.Stream, log: list[str]) -> None:
        self.inner = inner
        self.log = log

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        self.log.append("read")
        data = await self.inner.receive_some(max_bytes)
        self.log.append("got")
        return data

    async def send_all(self, data: bytes) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def lone_request_log() -> list[str]:
    """One request on a fresh connection; the transport's reads and the handler's start, in order."""
    log: list[str] = []

    async def handler(conn: H2Conn, stream: H2Stream) -> None:
        log.append("handler")
        await answer(conn, stream)

    async with trio.open_nursery() as nursery:
        ours, theirs = trio.testing.memory_stream_pair()
        conn = H2Conn(LoggedStream(theirs, log), client_side=False, on_stream=handler)
        nursery.start_soon(conn.run)
        client = Client(ours)
        await client.start()
        await client.pump_until(lambda: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in client.events))
        client.h2.send_headers(1, REQUEST, end_stream=True)
        await client.flush()
        await client.pump_until(lambda: client.ended(1))
        nursery.cancel_scope.cancel()
    return log


async def test_a_lone_request_starts_its_handler_before_the_reader_reads_again():
    # At low concurrency the handler's first step (which sends the request on) must not wait behind
    # the reader re-arming its socket; trio runs a batch in random order, hence several rounds.
    for _ in range(20):
        log = await lone_request_log()
        at = log.index("handler")
        assert log[at - 1] == "got", log  # no read began between the request's arrival and its handler


async def test_receive_available_takes_every_frame_already_here_as_one_piece_and_acknowledges_it():
    got: list[bytes | None] = []
    body_sent = trio.Event()

    async def relay(conn: H2Conn, stream: H2Stream) -> None:
        await body_sent.wait()
        await trio.testing.wait_all_tasks_blocked()  # the whole body has been read by now
        assert stream.ended and len(stream.chunks) >= 3  # three frames (and the empty one ending it)
        got.append(await stream.receive_available())
        got.append(await stream.receive_available())
        conn.send_headers(stream.id, [(b":status", b"200")], end_stream=True)

    async with trio.open_nursery() as nursery:
        ours, theirs = trio.testing.memory_stream_pair()
        conn = H2Conn(theirs, client_side=False, on_stream=relay)
        nursery.start_soon(conn.run)
        client = Client(ours)
        await client.start()
        client.h2.send_headers(1, [(b":method", b"POST"), *REQUEST[1:]])
        for part in (b"one,", b"two,", b"three"):  # read one by one (frames read together are one already)
            client.h2.send_data(1, part)
            await client.flush()
            await trio.testing.wait_all_tasks_blocked()
        client.h2.end_stream(1)
        await client.flush()
        body_sent.set()
        await client.pump_until(lambda: client.ended(1))
        assert got == [b"one,two,three", None]
        # All 13 bytes were handed back to the connection's flow control (h2 re-advertises them in
        # a WINDOW_UPDATE once enough is processed).
        assert conn.h2._inbound_flow_control_window_manager._bytes_processed == 13
        nursery.cancel_scope.cancel()
