"""Hostile input: each case is refused (or survived) while good traffic keeps flowing, and the
process's file descriptors, trio tasks and open HTTP/2 stream count (`H2Conn.process_streams`, which
decides when a stream's task may send its own frames) return to their baseline afterwards."""

from __future__ import annotations

import socket
import ssl
import struct
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certs.testing import make_pki
from certs.tls import client_context
from tests.integration.gateway.support import TopologyThread, metric_value, settled_fds

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
HEADER_TIMEOUT_S = 0.5
IDLE_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def shared(gateway_pki):
    from gateway.lb.balancer import BalancerSet
    from gateway.lb.policy import ServicePolicy

    settings_ = {"header_timeout_s": HEADER_TIMEOUT_S, "idle_timeout_s": IDLE_TIMEOUT_S,
                 "handshake_timeout_s": IDLE_TIMEOUT_S}
    # The fd and task counts must reflect the hostile input alone: no health checks or peer probes
    # opening and closing connections in the background (they have their own tests).
    quiet = ServicePolicy.from_mapping("*", {"health_check": {"enabled": False}, "peer_probe": {"interval_s": 3600}})
    with TopologyThread(gateway_pki, east_settings=settings_, west_settings=settings_,
                        make_picker_factory=lambda: BalancerSet(default=quiet)) as topo:
        yield topo


@pytest.fixture
def baseline(shared):
    """Warm the pools with good requests, then record fd, task and stream counts; check them at the end."""
    from gateway.h2conn import H2Conn

    good_request(shared)
    good_request(shared, http2=True)
    fds, tasks, streams = settled_fds(), shared.tasks_living(), shared.call(lambda: H2Conn.process_streams)
    yield
    after = shared.settle(fds, tasks)
    assert after[0] <= fds, f"file descriptors leaked: {fds} before, {after[0]} after"
    assert after[1] <= tasks, f"trio tasks leaked: {tasks} before, {after[1]} after"
    # The tasks have ended, so every stream they held has been forgotten.
    assert shared.call(lambda: H2Conn.process_streams) <= streams, "HTTP/2 streams left counted as open"


def outbound(shared) -> tuple[str, int]:
    return shared.topology.east.addresses["outbound"]


def good_request(shared, *, http2: bool = False) -> None:
    host, port = outbound(shared)
    with httpx.Client(base_url=f"http://{host}:{port}", http1=not http2, http2=http2, timeout=10) as client:
        response = client.get("/headers", headers={"host": "echo.demo"})
    assert response.status_code == 200
    assert response.headers["x-isthmus-cluster"] == "west-1"


def exchange(address: tuple[str, int], data: bytes, *, wait_s: float = 3.0) -> bytes:
    """Send `data`, then read until the gateway closes the connection (or `wait_s` passes)."""
    with socket.create_connection(address, timeout=wait_s) as sock:
        sock.sendall(data)
        out = b""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
        return out


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream_id) + payload


frames = st.builds(
    frame,
    st.integers(0, 12),
    st.integers(0, 255),
    st.sampled_from([0, 1, 2, 3, 5, 2**31 - 1]),
    st.binary(max_size=64),
)


# -- HTTP/2 ------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.one_of(st.binary(min_size=1, max_size=200), st.lists(frames, min_size=1, max_size=6).map(b"".join)))
def test_malformed_http2_after_a_valid_preface_harms_nobody(shared, junk):
    with socket.create_connection(outbound(shared), timeout=5) as bad:
        bad.sendall(PREFACE + EMPTY_SETTINGS + junk)
        good_request(shared, http2=True)  # while the bad connection is open
    assert shared.topology.east.ready


def test_known_bad_http2_sequences_get_goaway_and_leak_nothing(shared, baseline):
    cases = [
        frame(0x0, 0x1, 1, b"data on an idle stream"),
        frame(0x1, 0x4, 2, b"\x82"),  # HEADERS on an even (server) stream id
        frame(0x9, 0x4, 1, b"\x82"),  # CONTINUATION without HEADERS
        frame(0x4, 0x0, 1, b""),  # SETTINGS on a stream
        frame(0x8, 0x0, 0, b"\x00\x00\x00\x00"),  # WINDOW_UPDATE of zero
        frame(0x1, 0x5, 1, b"\xff\xff\xff"),  # undecodable header block
        frame(0x6, 0x0, 0, b"short"),  # PING of the wrong size
    ]
    for junk in cases:
        reply = exchange(outbound(shared), PREFACE + EMPTY_SETTINGS + junk)
        assert b"\x07\x00\x00\x00\x00\x00" in reply, f"no GOAWAY for {junk!r}"  # a GOAWAY frame header
        good_request(shared, http2=True)


def test_http2_headers_over_64_kib_are_refused(shared, baseline):
    import hpack

    block = hpack.Encoder().encode([(":method", "GET"), (":scheme", "http"), (":authority", "echo.demo"),
                                    (":path", "/headers"), ("x-big", "a" * 70_000)], huffman=False)
    frames_ = [frame(0x1, 0x1, 1, block[:16384])]
    rest = block[16384:]
    while rest:
        part, rest = rest[:16384], rest[16384:]
        frames_.append(frame(0x9, 0x4 if not rest else 0, 1, part))
    reply = exchange(outbound(shared), PREFACE + EMPTY_SETTINGS + b"".join(frames_))
    assert b"\x07\x00\x00\x00\x00\x00" in reply or b"\x03\x00\x00\x00\x00\x01" in reply  # GOAWAY or RST_STREAM
    good_request(shared, http2=True)


# -- HTTP/1.1 ----------------------------------------------------------------------------------------


head_lines = st.lists(
    st.one_of(
        st.sampled_from([b"host: echo.demo", b"content-length: 3", b"transfer-encoding: chunked", b" folded",
                         b"content-length: -1", b"expect: 100-continue", b"connection: close", b":", b"x: \x00"]),
        st.binary(max_size=40).filter(lambda b: b"\r\n" not in b),
    ),
    max_size=6,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.sampled_from([b"GET /headers HTTP/1.1", b"POST /echo HTTP/1.1", b"GET / HTTP/1.0", b"BREW /",
                              b""]),
       lines=head_lines, body=st.binary(max_size=64))
def test_malformed_http1_heads_harm_nobody(shared, start, lines, body):
    with socket.create_connection(outbound(shared), timeout=5) as bad:
        bad.sendall(b"\r\n".join([start, *lines]) + b"\r\n\r\n" + body)
        good_request(shared)  # while the bad connection is open
        bad.shutdown(socket.SHUT_WR)
        try:
            reply = bad.recv(65536)
        except (TimeoutError, ConnectionResetError):
            reply = b""
    assert reply == b"" or reply.startswith(b"HTTP/1.")
    assert shared.topology.east.ready


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (b"POST /echo HTTP/1.1\r\nhost: echo.demo\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n"
         b"0\r\n\r\nGET /admin HTTP/1.1\r\nhost: echo.demo\r\n\r\n", b"content-length-with-transfer-encoding"),
        (b"POST /echo HTTP/1.1\r\nhost: echo.demo\r\ncontent-length: 4\r\ncontent-length: 4\r\n\r\nabcd",
         b"duplicate-content-length"),
        (b"GET /headers HTTP/1.1\r\nhost: echo.demo\r\nx-a: 1\r\n  continued\r\n\r\n", b"obs-fold"),
        (b"GET /headers HTTP/1.1\r\nhost: echo.demo\r\ntransfer-encoding: gzip, chunked\r\n\r\n", b"bad-request"),
        (b"GET /headers HTTP/1.1\r\n\r\n", b"bad-request"),  # no Host
        (b"\x00\x01\x02 garbage\r\n\r\n", b"bad-request"),
    ],
)
def test_http1_smuggling_shapes_are_400_and_never_forwarded(shared, baseline, head, reason):
    before = metric_value(shared.topology.west, "isthmus_requests_total")
    reply = exchange(outbound(shared), head)
    assert reply.split(b"\r\n", 1)[0] in (b"HTTP/1.1 400 Bad Request", b"HTTP/1.1 501 Not Implemented")
    assert b"x-isthmus-reason: " + reason in reply
    assert metric_value(shared.topology.west, "isthmus_requests_total") == before  # nothing crossed
    good_request(shared)


def test_http1_headers_over_64_kib_are_431(shared, baseline):
    head = b"GET /headers HTTP/1.1\r\nhost: echo.demo\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n"
    reply = exchange(outbound(shared), head)
    assert reply.startswith(b"HTTP/1.1 431")
    good_request(shared)


def test_slowloris_head_is_cut_at_the_header_timeout(shared, baseline):
    with socket.create_connection(outbound(shared), timeout=5) as slow:
        slow.sendall(b"GET /headers HTTP/1.1\r\nhost: echo")
        started = time.monotonic()
        good_request(shared)  # while the slow client dribbles
        reply = b""
        while True:
            chunk = slow.recv(65536)
            if not chunk:
                break
            reply += chunk
        waited = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408")
    assert HEADER_TIMEOUT_S * 0.5 <= waited < HEADER_TIMEOUT_S + 2


def test_silent_connections_are_closed_at_the_idle_timeout(shared, baseline):
    for address in (outbound(shared), shared.topology.west.addresses["eastwest"]):
        with socket.create_connection(address, timeout=5) as idle:
            started = time.monotonic()
            assert idle.recv(100) == b""
            assert time.monotonic() - started < IDLE_TIMEOUT_S + 2.5
    good_request(shared)


# -- TLS on the east-west listener -------------------------------------------------------------------


def refused(address: tuple[str, int], context: ssl.SSLContext) -> bool:
    """True when the server refuses the handshake. TLS 1.3 clients learn of a refused client
    certificate only on their first read: an alert (SSLError) or the connection closing."""
    try:
        with socket.create_connection(address, timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="echo.demo") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nhost: echo.demo\r\n\r\n")
                return tls.recv(100) == b""
    except (ssl.SSLError, ConnectionError):
        return True


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """A PKI with the same trust domain but another root, and one from an unlinked trust domain."""
    return (
        make_pki(tmp_path_factory.mktemp("rogue"), clusters={"east-1": ("us-east", "us-east-1a")}),
        make_pki(tmp_path_factory.mktemp("other-td"), trust_domain="other.example",
                 clusters={"east-1": ("us-east", "us-east-1a")}),
    )


def test_refused_handshakes_are_counted_by_reason(shared, baseline, foreign, gateway_pki):
    rogue, other = foreign
    west = shared.topology.west
    address = west.addresses["eastwest"]
    cases = [
        ("no-client-cert", client_context(None, gateway_pki.bundle)),
        ("unknown-ca", client_context(rogue.identity("east-1"), gateway_pki.bundle)),
        ("unknown-ca", client_context(other.identity("east-1"), gateway_pki.bundle)),
    ]
    for reason, context in cases:
        before = metric_value(west, "isthmus_tls_handshake_failures_total", listener="eastwest", reason=reason)
        assert refused(address, context), reason
        good_request(shared)
        deadline = time.monotonic() + 5
        while metric_value(west, "isthmus_tls_handshake_failures_total", listener="eastwest",
                           reason=reason) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert metric_value(west, "isthmus_tls_handshake_failures_total", listener="eastwest",
                            reason=reason) == before + 1, reason


def test_plain_text_on_the_east_west_port_is_refused(shared, baseline):
    reply = exchange(shared.topology.west.addresses["eastwest"], b"GET / HTTP/1.1\r\nhost: echo.demo\r\n\r\n")
    assert reply == b""
    assert metric_value(shared.topology.west, "isthmus_tls_handshake_failures_total", reason="not-tls") >= 1
    good_request(shared)
