"""The HTTP/1.1 smuggling guard refuses what two parsers could frame differently."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.h1guard import HeadRejected, check_request_head, find_head_end


def head(*lines: str) -> bytes:
    return ("\r\n".join(["POST / HTTP/1.1", "host: a.b", *lines]) + "\r\n\r\n").encode()


def test_a_plain_head_passes():
    assert check_request_head(head("content-length: 5")) is None
    assert check_request_head(head("transfer-encoding: chunked")) is None


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        (("content-length: 5", "transfer-encoding: chunked"), "content-length-with-transfer-encoding"),
        (("Transfer-Encoding: chunked", "Content-Length: 5"), "content-length-with-transfer-encoding"),
        (("content-length: 5", "content-length: 5"), "duplicate-content-length"),
        (("content-length: 5", "Content-Length: 6"), "duplicate-content-length"),
        (("x-a: 1", " folded"), "obs-fold"),
        (("x-a: 1", "\tfolded"), "obs-fold"),
    ],
)
def test_smuggling_shapes_are_400(lines, reason):
    assert check_request_head(head(*lines)) == HeadRejected(400, reason)


def test_find_head_end_handles_crlf_and_bare_lf():
    assert find_head_end(b"GET / HTTP/1.1\r\nhost: a\r\n\r\nbody") == 27
    assert find_head_end(b"GET / HTTP/1.1\nhost: a\n\nbody") == 24
    assert find_head_end(b"GET / HTTP/1.1\r\nhost: a\r\n") == -1


@given(st.binary(max_size=300))
def test_never_crashes(data):
    verdict = check_request_head(data)
    assert verdict is None or verdict.status == 400
