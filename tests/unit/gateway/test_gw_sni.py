"""The ClientHello reader: SNI and ALPN out of real and generated ClientHellos; never a crash on junk."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sni import ClientHello, NotClientHello, build_client_hello, parse_client_hello

hostnames = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?){0,3}",
                          fullmatch=True)
alpns = st.lists(st.sampled_from(["h2", "http/1.1", "grpc-exp", "x"]), max_size=3, unique=True).map(tuple)


def real_client_hello(server_name: str, alpn: list[str]) -> bytes:
    """The bytes Python's ssl module (OpenSSL) sends first, with SNI and ALPN."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_reads_sni_and_alpn_from_an_openssl_client_hello():
    data = real_client_hello("checkout.shop", ["h2", "http/1.1"])
    assert parse_client_hello(data) == ClientHello("checkout.shop", ("h2", "http/1.1"))


def test_every_strict_prefix_of_a_client_hello_asks_for_more():
    data = real_client_hello("db.shop", ["h2"])
    for n in range(len(data)):
        assert parse_client_hello(data[:n]) is None


@given(hostnames, alpns, st.integers(min_value=16, max_value=600))
def test_round_trip_across_record_boundaries(name, alpn, record_size):
    data = build_client_hello(name, alpn, record_size=record_size)
    assert parse_client_hello(data) == ClientHello(name, alpn)
    assert parse_client_hello(data + b"trailing application bytes") == ClientHello(name, alpn)


def test_no_sni_is_none():
    assert parse_client_hello(build_client_hello(None, ("h2",))) == ClientHello(None, ("h2",))


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n", b"PRI * HTTP/2.0\r\n", b"\x16\x07\x01\x00\x10",
                                  b"\x16\x03\x01\x00\x00", b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00"])
def test_plain_text_and_broken_records_are_not_client_hellos(data):
    with pytest.raises(NotClientHello):
        parse_client_hello(data)


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_crash(data):
    try:
        result = parse_client_hello(data)
    except NotClientHello:
        return
    assert result is None or isinstance(result, ClientHello)


@settings(max_examples=300)
@given(hostnames, st.integers(min_value=0, max_value=200), st.binary(min_size=1, max_size=4))
def test_corrupted_client_hellos_never_crash(name, position, junk):
    data = bytearray(build_client_hello(name, ("h2",)))
    position %= len(data)
    data[position : position + len(junk)] = junk
    try:
        result = parse_client_hello(bytes(data))
    except NotClientHello:
        return
    assert result is None or isinstance(result, ClientHello)
