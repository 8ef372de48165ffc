"""Hop-by-hop headers are stripped, `te: trailers` kept, the peer identity header never forwarded;
request ids are unique, in forked workers too."""

from __future__ import annotations

import os

from gateway.headers import new_request_id, request_protocol, response_headers_out, strip_hop_by_hop


def test_strips_hop_by_hop_and_those_connection_names():
    headers = [
        (b"connection", b"keep-alive, x-private"),
        (b"keep-alive", b"timeout=5"),
        (b"x-private", b"1"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"h2c"),
        (b"host", b"a.b"),
        (b":path", b"/"),
        (b"x-isthmus-peer-identity", b"spiffe://forged"),
        (b"te", b"trailers"),
        (b"accept", b"*/*"),
    ]
    assert strip_hop_by_hop(headers) == [(b"accept", b"*/*"), (b"te", b"trailers")]


def test_te_other_than_trailers_is_dropped():
    assert strip_hop_by_hop([(b"te", b"gzip")]) == []


def test_response_names_the_serving_cluster_once():
    out = response_headers_out([(b"x-isthmus-cluster", b"spoof"), (b"connection", b"close"), (b"a", b"1")], b"west-1")
    assert out == [(b"a", b"1"), (b"x-isthmus-cluster", b"west-1")]


def test_request_protocol_label():
    assert request_protocol([(b"content-type", b"application/grpc+proto")]) == "grpc"
    assert request_protocol([(b"content-type", b"text/plain")]) == "http"
    assert request_protocol([]) == "http"


def test_request_ids_are_32_hex_digits_and_do_not_repeat():
    ids = {new_request_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(len(value) == 32 and int(value, 16) >= 0 for value in ids)


def test_a_forked_worker_does_not_repeat_its_parents_request_ids():
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then leave without running pytest's teardown
        os.write(write_end, new_request_id())
        os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 64)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert child != new_request_id()
