"""`ForwardingH2Connection`'s own HEADERS and DATA paths (no hyperframe objects, no validation flags,
a run of DATA frames in one call) behave as h2's: the same bytes on the wire (CONTINUATION
included), the same windows and stream states, the same events with the same headers, and the same
protocol errors."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame as hf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.h2tuning import ForwardingDecoder, ForwardingEncoder, ForwardingH2Connection

REQUEST = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"echo.demo"), (b":path", b"/")]
names = st.sampled_from([b"x-a", b"content-type", b"x-request-id", b"authorization", b"user-agent", b"te"])
values = st.binary(max_size=40).map(lambda b: bytes(c % 26 + 97 for c in b))
extra_headers = st.lists(st.tuples(names, values), max_size=8)


def config(client_side: bool) -> h2.config.H2Configuration:
    return h2.config.H2Configuration(
        client_side=client_side, header_encoding=None, validate_outbound_headers=False,
        normalize_outbound_headers=False, split_outbound_cookies=False, validate_inbound_headers=False,
        normalize_inbound_headers=False,
    )  # fmt: skip


def pair(client_side: bool) -> tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    """(ours, h2's own) with the same configuration and codec."""
    out = []
    for cls in (ForwardingH2Connection, h2.connection.H2Connection):
        conn = cls(config=config(client_side))
        conn.encoder = ForwardingEncoder()
        conn.decoder = ForwardingDecoder()
        conn.initiate_connection()
        conn.data_to_send()
        out.append(conn)
    return out[0], out[1]


def summary(events: list) -> list:
    return [(type(e).__name__, getattr(e, "stream_id", None), getattr(e, "headers", None),
             getattr(e, "stream_ended", None) is not None) for e in events]  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(extra=extra_headers, end_stream=st.booleans(), big=st.sampled_from([0, 20_000, 40_000]))
def test_a_client_sends_the_same_bytes_and_ends_in_the_same_state(extra, end_stream, big):
    ours, theirs = pair(client_side=True)
    headers = REQUEST + extra + ([(b"x-big", b"b" * big)] if big else [])
    for conn in (ours, theirs):
        conn.send_headers(1, headers, end_stream=end_stream)
        if not end_stream:
            conn.send_headers(1, [(b"x-trailer", b"1")], end_stream=True)  # trailers
    assert ours.data_to_send() == theirs.data_to_send()
    assert ours.streams[1].state_machine.state == theirs.streams[1].state_machine.state
    assert ours.streams[1]._authority == theirs.streams[1]._authority == b"echo.demo"


@settings(max_examples=150, deadline=None)
@given(extra=extra_headers, end_stream=st.booleans(), informational=st.booleans(), big=st.sampled_from([0, 40_000]))
def test_a_server_receives_and_answers_with_the_same_events_bytes_and_states(extra, end_stream, informational, big):
    client = h2.connection.H2Connection(config=config(client_side=True))
    client.initiate_connection()
    client.send_headers(1, REQUEST + extra + ([(b"x-big", b"b" * big)] if big else []), end_stream=end_stream)
    if not end_stream:
        client.send_data(1, b"body", end_stream=True)
    wire = client.data_to_send()
    ours, theirs = pair(client_side=False)
    got = [conn.receive_data(wire) for conn in (ours, theirs)]
    assert summary(got[0]) == summary(got[1])
    response = ([(b":status", b"100")] if informational else []), [(b":status", b"200"), (b"x-b", b"2")]
    for conn in (ours, theirs):
        conn.data_to_send()
        for block in response:
            if block:
                conn.send_headers(1, block, end_stream=False)
        conn.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
    assert ours.data_to_send() == theirs.data_to_send()
    assert ours.streams[1].state_machine.state == theirs.streams[1].state_machine.state


def test_the_protocol_errors_are_h2s():
    for client_side, first in ((False, [(b":status", b"100")]), (True, REQUEST)):
        for conn in pair(client_side):
            if client_side:
                conn.send_headers(1, first, end_stream=True)
                with pytest.raises(h2.exceptions.ProtocolError):
                    conn.send_headers(1, [(b"x", b"y")], end_stream=False)  # the stream is half-closed
            else:
                client = h2.connection.H2Connection(config=config(client_side=True))
                client.initiate_connection()
                client.send_headers(1, REQUEST, end_stream=True)
                conn.receive_data(client.data_to_send())
                with pytest.raises(h2.exceptions.ProtocolError, match="informational"):
                    conn.send_headers(1, first, end_stream=True)


def test_a_stream_beyond_the_peers_limit_is_refused_as_h2_refuses_it():
    for conn in pair(client_side=True):
        conn.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 1
        conn.remote_settings.acknowledge()
        conn.send_headers(1, REQUEST)
        with pytest.raises(h2.exceptions.TooManyStreamsError):
            conn.send_headers(3, REQUEST)


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 70_000), min_size=1, max_size=4), end_stream=st.booleans(),
       frame_size=st.sampled_from([16_384, 20_000, 65_536]))
def test_a_run_of_data_frames_is_what_h2_sends_frame_by_frame(sizes, end_stream, frame_size):
    ours, theirs = pair(client_side=True)
    for conn in (ours, theirs):
        conn.remote_settings[h2.settings.SettingCodes.MAX_FRAME_SIZE] = frame_size
        conn.remote_settings[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] = 1 << 20
        conn.remote_settings.acknowledge()
        conn.max_outbound_frame_size = frame_size  # what receiving the peer's SETTINGS does
        conn.outbound_flow_control_window = 1 << 20
        conn.send_headers(1, REQUEST)
    for index, size in enumerate(sizes):
        last = end_stream and index == len(sizes) - 1
        data = bytes([index % 251]) * size
        ours.send_data_run(1, data, last)
        for start in range(0, size, frame_size):  # h2's own way: one call per frame
            theirs.send_data(1, data[start:start + frame_size], end_stream=last and start + frame_size >= size)
    assert ours.data_to_send() == theirs.data_to_send()
    assert ours.streams[1].outbound_flow_control_window == theirs.streams[1].outbound_flow_control_window
    assert ours.outbound_flow_control_window == theirs.outbound_flow_control_window
    assert ours.streams[1].state_machine.state == theirs.streams[1].state_machine.state


def test_a_data_run_beyond_the_window_or_after_the_stream_ended_is_refused_as_h2_refuses_it():
    ours, theirs = pair(client_side=True)
    for conn in (ours, theirs):
        conn.send_headers(1, REQUEST)
    with pytest.raises(h2.exceptions.FlowControlError):
        ours.send_data_run(1, b"x" * 70_000, False)  # the initial window is 65,535
    ours.send_data_run(1, b"x", True)
    theirs.send_data(1, b"x", end_stream=True)
    for send in (lambda: ours.send_data_run(1, b"y", False), lambda: theirs.send_data(1, b"y")):
        with pytest.raises(h2.exceptions.ProtocolError, match="SEND_DATA"):
            send()
    with pytest.raises(h2.exceptions.NoSuchStreamError):
        ours.send_data_run(9, b"z", False)  # a stream that never was


def _data_events(events: list) -> tuple[bytes, int, int, bool]:
    data = [e for e in events if type(e) is h2.events.DataReceived]
    return (b"".join(e.data for e in data), sum(e.flow_controlled_length for e in data), len(data),
            any(type(e) is h2.events.StreamEnded for e in events))


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 20_000), min_size=1, max_size=5), end_stream=st.booleans(),
       after_end=st.booleans(), window=st.sampled_from([65_535, 1 << 20]))
def test_data_frames_that_arrive_together_are_one_event_with_h2s_data_windows_and_states(
        sizes, end_stream, after_end, window):
    server = h2.connection.H2Connection(config=config(client_side=False))
    server.initiate_connection()
    preface = h2.connection.H2Connection(config=config(client_side=True))
    preface.initiate_connection()
    server.receive_data(preface.data_to_send())
    ours, theirs = pair(client_side=True)
    for conn in (ours, theirs):
        conn.send_headers(1, REQUEST, end_stream=True)
    server.receive_data(theirs.data_to_send())
    ours.data_to_send()
    server.send_headers(1, [(b":status", b"200")])
    # Frames of any size up to the window: the server's own limits must not stop a run the client refuses.
    server.max_outbound_frame_size = 1 << 20
    server.outbound_flow_control_window = server.streams[1].outbound_flow_control_window = 1 << 24
    for index, size in enumerate(sizes):
        server.send_data(1, bytes([index]) * size, end_stream=end_stream and index == len(sizes) - 1)
    wire = server.data_to_send()
    if end_stream and after_end:  # a DATA frame after END_STREAM, in the same read
        wire += hf.DataFrame(1, data=b"late").serialize()
    outcomes = []
    for conn in (ours, theirs):
        conn.local_settings[h2.settings.SettingCodes.MAX_FRAME_SIZE] = 1 << 20
        conn.local_settings.acknowledge()
        conn.max_inbound_frame_size = 1 << 20
        conn._inbound_flow_control_window_manager.current_window_size = window
        conn.streams[1]._inbound_window_manager.current_window_size = window
        try:
            events = conn.receive_data(wire)
        except h2.exceptions.ProtocolError as exc:
            outcomes.append(type(exc))
            continue
        stream = conn.streams.get(1)
        outcomes.append((_data_events(events), conn._inbound_flow_control_window_manager.current_window_size,
                         stream is not None and stream.state_machine.state,
                         stream is not None and stream._inbound_window_manager.current_window_size))
    if isinstance(outcomes[0], tuple) and isinstance(outcomes[1], tuple):
        (data, flow, count, ended), *rest = outcomes[0]
        (their_data, their_flow, their_count, their_ended), *their_rest = outcomes[1]
        assert (data, flow, ended, rest) == (their_data, their_flow, their_ended, their_rest)
        assert count == min(their_count, 1)  # one event for the run h2 reports frame by frame
    else:
        assert outcomes[0] == outcomes[1]
