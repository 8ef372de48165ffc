"""Hop-by-hop headers are stripped, `te: trailers` kept, the peer identity header never forwarded."""

from __future__ import annotations

from gateway.headers import request_protocol, response_headers_out, strip_hop_by_hop


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
