"""Inbound header checks (`gateway.h2tuning.check_request_headers` / `check_trailers`) refuse what
h2's own validation refuses, and the fast frame buffer and serialiser produce exactly the frames
hyperframe does."""

from __future__ import annotations

import random

import h2.config
import h2.exceptions
import h2.frame_buffer
import h2.utilities
import hyperframe.frame as hf
import pytest
from hpack.struct import HeaderTuple, NeverIndexedHeaderTuple
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.h2tuning import (
    MAX_KNOWN_REQUESTS,
    FastFrameBuffer,
    MalformedHeaders,
    RequestChecks,
    SentDataFrame,
    SentHeadersFrame,
    check_request_headers,
    check_trailers,
    serialize_frame,
    tune_h2_for_forwarding,
    utf8_encode_headers,
)

GOOD = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"echo.demo"), (b":path", b"/"),
        (b"accept", b"*/*"), (b"te", b"trailers")]


def h2_refuses(headers, *, trailer=False) -> bool:
    flags = h2.utilities.HeaderValidationFlags(is_client=False, is_trailer=trailer, is_response_header=False,
                                               is_push_promise=False)
    try:
        list(h2.utilities.validate_headers(headers, flags))
    except h2.exceptions.ProtocolError:
        return True
    return False


@pytest.mark.parametrize("headers", [
    GOOD + [(b"X-Upper", b"1")],
    GOOD + [(b"x-a", b"one\r\nx-injected: yes")],  # CRLF smuggling into an HTTP/1.1 upstream
    GOOD + [(b"x-a", b"nul\x00")],
    GOOD + [(b"x-a", b" padded")],
    GOOD + [(b"x-a", b"padded\t")],
    GOOD + [(b"", b"empty name")],
    GOOD + [(b"x a", b"space in name")],
    GOOD + [(b"x:a", b"colon in name")],
    GOOD + [(b"connection", b"keep-alive")],
    GOOD + [(b"transfer-encoding", b"chunked")],
    GOOD + [(b"upgrade", b"h2c")],
    GOOD + [(b"te", b"gzip")],
    GOOD + [(b":path", b"/again")],
    GOOD + [(b":status", b"200")],
    GOOD + [(b":custom", b"x")],
    [(b"accept", b"*/*")] + GOOD,  # pseudo-header after a regular one
    [h for h in GOOD if h[0] != b":method"],
    [h for h in GOOD if h[0] != b":path"],
    [h for h in GOOD if h[0] != b":scheme"],
    [(b":path", b"") if h[0] == b":path" else h for h in GOOD],
    [h for h in GOOD if h[0] != b":authority"],  # neither :authority nor host
    GOOD + [(b"host", b"other.demo")],  # :authority and host disagree
    GOOD + [(b"host", b"echo.demo"), (b"host", b"echo.demo")],
    [(b":method", b"CONNECT"), (b":authority", b"a:443"), (b":path", b"/")],
    GOOD + [(b":protocol", b"websocket")],  # :protocol without CONNECT
])
def test_malformed_requests_are_refused_like_h2_refuses_them(headers):
    assert h2_refuses(headers)
    with pytest.raises(MalformedHeaders):
        check_request_headers(headers)
    with pytest.raises(MalformedHeaders):
        check_request_headers(headers, {b"accept", b"x-a", b"te", b"host"})  # with names known to be legal


@pytest.mark.parametrize("headers", [
    GOOD,
    GOOD + [(b"host", b"echo.demo"), (b"x-empty", b""), (b"grpc-timeout", b"1S")],
    [(b":method", b"CONNECT"), (b":authority", b"a:443")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"*"), (b"host", b"h")],
])
def test_well_formed_requests_pass(headers):
    assert not h2_refuses(headers)
    check_request_headers(headers)
    check_request_headers(headers, set())


def test_trailers_may_not_carry_pseudo_headers_or_bad_fields():
    check_trailers([(b"grpc-status", b"0"), (b"grpc-message", b"")])
    for bad in ([(b":status", b"200")], [(b"x-a", b"b\r\n")], [(b"connection", b"close")], [(b"X", b"1")]):
        assert h2_refuses(bad, trailer=True)
        with pytest.raises(MalformedHeaders):
            check_trailers(bad)


field = st.tuples(st.binary(max_size=8), st.binary(max_size=8))


@settings(max_examples=400, deadline=None)
@given(extra=st.lists(field, max_size=4), position=st.integers(0, 6))
def test_any_request_h2_refuses_is_refused(extra, position):
    headers = GOOD[:position] + extra + GOOD[position:]
    if h2_refuses(headers):
        with pytest.raises(MalformedHeaders):
            check_request_headers(headers)


def _frames(rng: random.Random) -> list[hf.Frame]:
    out: list[hf.Frame] = []
    for _ in range(300):
        kind = rng.choice(["data", "headers", "continued", "window", "padded", "priority", "ping"])
        sid = rng.choice([1, 3, 2**31 - 1])
        if kind == "data":
            out.append(hf.DataFrame(sid, data=rng.randbytes(rng.randint(0, 90)),
                                    flags=rng.choice([[], ["END_STREAM"]])))
        elif kind == "padded":
            frame = hf.DataFrame(sid, data=b"abc", flags=["PADDED"])
            frame.pad_length = 3
            out.append(frame)
        elif kind == "headers":
            out.append(hf.HeadersFrame(sid, data=rng.randbytes(12), flags=["END_HEADERS"] + rng.choice([[], ["END_STREAM"]])))
        elif kind == "priority":
            frame = hf.HeadersFrame(sid, data=b"xy", flags=["END_HEADERS", "PRIORITY"])
            frame.stream_weight = 16
            out.append(frame)
        elif kind == "continued":
            out.append(hf.HeadersFrame(sid, data=b"ab"))
            out.append(hf.ContinuationFrame(sid, data=b"cd", flags=["END_HEADERS"]))
        elif kind == "window":
            out.append(hf.WindowUpdateFrame(0, window_increment=100))
        else:
            out.append(hf.PingFrame(0, opaque_data=b"12345678"))
    return out


def _joined_data_runs(frames: list[hf.Frame]) -> list[hf.Frame]:
    """`frames` with each run of unpadded DATA frames on one stream (up to one with END_STREAM) as
    one frame: what the fast buffer makes of frames that are complete in the buffer together."""
    out: list[hf.Frame] = []
    for frame in frames:
        last = out[-1] if out else None
        if (type(frame) is hf.DataFrame and type(last) is hf.DataFrame and "PADDED" not in frame.flags
                and "PADDED" not in last.flags and "END_STREAM" not in last.flags
                and frame.stream_id == last.stream_id):
            joined = hf.DataFrame(frame.stream_id, data=last.data + frame.data, flags=frame.flags)
            joined.body_len = len(joined.data)
            out[-1] = joined
        else:
            out.append(frame)
    return out


@pytest.mark.parametrize("reads", ["small", "large"])  # large: many frames, fast and not, per read
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fast_frame_buffer_and_serialiser_match_hyperframe(seed, reads):
    frames = _frames(random.Random(seed))
    wire = b"".join(frame.serialize() for frame in frames)
    assert b"".join(serialize_frame(frame) for frame in frames) == wire
    theirs, ours = h2.frame_buffer.FrameBuffer(), FastFrameBuffer()
    theirs.max_frame_size = ours.max_frame_size = 16384
    chunk = random.Random(seed).randint(5, 60) if reads == "small" else random.Random(seed).randint(300, 3000)
    for start in range(0, len(wire), chunk):
        theirs.add_data(wire[start:start + chunk])
        ours.add_data(wire[start:start + chunk])
        expected, got = _joined_data_runs(list(theirs)), list(ours)
        assert len(expected) == len(got)
        for a, b in zip(expected, got, strict=True):
            assert type(a) is type(b) and a.stream_id == b.stream_id and set(a.flags) == set(b.flags)
            assert getattr(a, "data", None) == getattr(b, "data", None) and a.body_len == b.body_len
            assert serialize_frame(b) == a.serialize()
            if isinstance(a, hf.DataFrame):
                assert a.flow_controlled_length == b.flow_controlled_length


@pytest.mark.parametrize("wire", [
    hf.DataFrame(1, data=b"x" * 100).serialize(),  # longer than the limit
    b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x",  # DATA on stream 0
    b"\x00\x00\x01\x01\x04\x00\x00\x00\x00\x82",  # HEADERS on stream 0
])
def test_fast_frame_buffer_refuses_what_h2_refuses(wire):
    for buffer in (h2.frame_buffer.FrameBuffer(), FastFrameBuffer()):
        buffer.max_frame_size = 50
        buffer.add_data(wire)
        with pytest.raises(h2.exceptions.ProtocolError):
            list(buffer)


def test_frames_h2_sends_are_byte_for_byte_hyperframes():
    tune_h2_for_forwarding()
    for flags in ([], ["END_STREAM"], ["END_HEADERS"], ["END_STREAM", "END_HEADERS"]):
        for fast_class, slow_class in ((SentHeadersFrame, hf.HeadersFrame), (SentDataFrame, hf.DataFrame)):
            fast, slow = fast_class(7), slow_class(7)
            for flag in flags:
                if flag in slow.flags._valid_flags:
                    fast.flags.add(flag)
                    slow.flags.add(flag)
            fast.data = slow.data = b"payload"
            assert serialize_frame(fast) == fast.serialize() == slow.serialize()
    padded = SentDataFrame(3)
    padded.flags.add("PADDED")
    padded.pad_length, padded.data = 2, b"x"
    assert serialize_frame(padded) == hf.DataFrame(3, data=b"x", pad_length=2, flags=["PADDED"]).serialize()
    with pytest.raises(ValueError):
        SentDataFrame(1).flags.add("END_HEADERS")  # still only the frame type's own flags


def test_header_encoding_for_h2_matches_h2s_own():
    headers = [(b":status", b"200"), (":path", "/ü"), (b"x-a", "é"), HeaderTuple(b"x-b", b"1"),
               NeverIndexedHeaderTuple("x-c", b"2")]
    ours, theirs = utf8_encode_headers(headers), h2.utilities.utf8_encode_headers(headers)
    assert ours == theirs and [type(h) for h in ours] == [type(h) for h in theirs]


def test_a_connections_checks_remember_what_passed_and_still_refuse_what_does_not():
    checks = RequestChecks()
    good = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.b"), (b":path", b"/")]
    for _ in range(3):
        checks.check(good)
    assert checks.lists == {tuple(good)} and not checks.names
    with pytest.raises(MalformedHeaders):
        checks.check(good + [(b"connection", b"close")])  # never remembered, refused each time
    with pytest.raises(MalformedHeaders):
        checks.check(good + [(b"connection", b"close")])
    checks.check(good + [(b"x-big", b"v" * 4096)])  # passes, too large to keep
    for n in range(100):
        checks.check(good + [(b"x-n", str(n).encode())])
    assert len(checks.lists) <= MAX_KNOWN_REQUESTS and tuple(good + [(b"x-big", b"v" * 4096)]) not in checks.lists
