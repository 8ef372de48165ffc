"""The forwarding HPACK encoder and decoder (`gateway.h2tuning`) speak the same HPACK as hpack:
every block they write decodes to the same headers with hpack, every block hpack writes (Huffman,
dynamic table, size updates) decodes to the same headers with ours, and bad blocks fail the same way."""

from __future__ import annotations

import ast
from pathlib import Path

import hpack
import hpack.exceptions
import pytest
from hpack.struct import NeverIndexedHeaderTuple
from hypothesis import given, settings
from hypothesis import strategies as st

import gateway
from gateway.h2tuning import MAX_CACHED_BLOCKS, ForwardingDecoder, ForwardingEncoder, encode_integer

names = st.one_of(
    st.sampled_from([b":method", b":path", b":authority", b":status", b"content-type", b"user-agent",
                     b"x-request-id", b"authorization", b"cookie", b"grpc-status", b"te"]),
    st.binary(min_size=1, max_size=40).map(lambda b: bytes(c % 26 + 97 for c in b)),
)
values = st.one_of(st.sampled_from([b"GET", b"200", b"/", b"", b"trailers", b"*/*"]), st.binary(max_size=300))
header_lists = st.lists(st.tuples(names, values), max_size=20)


def test_h2tuning_is_pure():
    tree = ast.parse((Path(gateway.__file__).parent / "h2tuning.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"trio", "socket", "ssl", "time", "federation", "asyncio"}


@settings(max_examples=150, deadline=None)
@given(blocks=st.lists(header_lists, min_size=1, max_size=4))
def test_our_blocks_decode_the_same_with_hpack_and_with_ours(blocks):
    encoder, theirs, ours = ForwardingEncoder(), hpack.Decoder(), ForwardingDecoder()
    for headers in blocks:
        block = encoder.encode(headers)
        assert [tuple(h) for h in theirs.decode(block, raw=True)] == headers
        assert [tuple(h) for h in ours.decode(block)] == headers


@settings(max_examples=150, deadline=None)
@given(blocks=st.lists(header_lists, min_size=1, max_size=4), huffman=st.booleans(),
       table_size=st.sampled_from([None, 0, 256, 4096]))
def test_hpack_blocks_decode_the_same_with_ours(blocks, huffman, table_size):
    encoder, theirs, ours = hpack.Encoder(), hpack.Decoder(), ForwardingDecoder()
    if table_size is not None:
        encoder.header_table_size = table_size
    for headers in blocks:
        block = encoder.encode(headers, huffman=huffman)
        assert [tuple(h) for h in ours.decode(block)] == [tuple(h) for h in theirs.decode(block, raw=True)]
        assert list(ours.header_table.dynamic_entries) == list(theirs.header_table.dynamic_entries)


def test_repeated_static_fields_are_one_byte_and_nothing_is_huffman_coded():
    block = ForwardingEncoder().encode([(b":method", b"GET"), (b":status", b"200"), (b"x-a", b"hello")])
    assert block[:2] == b"\x82\x88"
    assert block[2:] == b"\x00\x03x-a\x05hello"  # literal without indexing, plain strings


def test_credentials_and_never_indexed_fields_stay_never_indexed():
    encoder, decoder = ForwardingEncoder(), hpack.Decoder()
    headers = [(b"authorization", b"Bearer abc"), NeverIndexedHeaderTuple(b"x-secret", b"s")]
    decoded = decoder.decode(encoder.encode(headers), raw=True)
    assert all(isinstance(h, NeverIndexedHeaderTuple) for h in decoded)
    # And a never-indexed field we receive is forwarded never-indexed.
    ours = ForwardingDecoder().decode(encoder.encode(headers))
    assert all(isinstance(h, NeverIndexedHeaderTuple) for h in ours)


def test_a_peer_table_size_change_is_answered_with_a_size_update_to_zero():
    encoder = ForwardingEncoder()
    encoder.header_table_size = 1024
    block = encoder.encode([(b":status", b"200")])
    assert block == b"\x20\x88"
    assert encoder.encode([(b":status", b"200")]) == b"\x88"
    decoder = hpack.Decoder()
    decoder.max_allowed_table_size = 1024
    assert decoder.decode(block, raw=True) == [(b":status", b"200")]


def test_long_names_and_values_use_multi_byte_lengths():
    headers = [(b"x-" + b"n" * 200, b"v" * 70_000)]
    assert [tuple(h) for h in hpack.Decoder(max_header_list_size=1 << 20).decode(
        ForwardingEncoder().encode(headers), raw=True)] == headers
    assert encode_integer(1337, 5) == bytes([31, 154, 10])  # RFC 7541 C.1.2


@pytest.mark.parametrize("block", [
    b"\x80",  # index 0
    b"\xbf",  # index 63: beyond the static table with an empty dynamic table
    b"\x00\x05ab",  # truncated name
    b"\x00\x01a\x05b",  # truncated value
    b"\x00\x01a\xff\xff\xff\xff\xff\xff\xff",  # an endless integer
    b"\x82\x3f\xe1\x1f",  # table size update after a field
    b"\x00\x01a\x81\xff",  # bad Huffman
])
def test_bad_blocks_fail_as_hpack_errors(block):
    with pytest.raises(hpack.exceptions.HPACKError):
        hpack.Decoder().decode(block, raw=True)
    with pytest.raises(hpack.exceptions.HPACKError):
        ForwardingDecoder().decode(block)


def test_oversized_header_lists_and_tables_are_refused():
    decoder = ForwardingDecoder(max_header_list_size=100)
    with pytest.raises(hpack.exceptions.OversizedHeaderListError):
        decoder.decode(ForwardingEncoder().encode([(b"x-big", b"a" * 200)]))
    decoder = ForwardingDecoder()
    decoder.max_allowed_table_size = 100
    with pytest.raises(hpack.exceptions.InvalidTableSizeError):
        decoder.decode(b"\x3f\xe1\x1f")  # size update to 4096


@settings(max_examples=150, deadline=None)
@given(blocks=st.lists(st.tuples(header_lists, st.booleans()), min_size=1, max_size=6),
       repeats=st.lists(st.integers(0, 5), min_size=1, max_size=12), huffman=st.booleans())
def test_a_block_decoded_again_is_what_hpack_decodes_whatever_the_table_did_meanwhile(blocks, repeats, huffman):
    # hpack's encoder indexes what it sends: blocks that add to the table, then the same fields
    # again as indexed blocks whose meaning changes as the table does.
    encoder, theirs, ours = hpack.Encoder(), hpack.Decoder(), ForwardingDecoder()
    sent = [encoder.encode(headers, huffman=huffman) for headers, _ in blocks]
    for index in [*range(len(sent)), *repeats]:  # in order first, then any block again
        block = sent[index % len(sent)]
        try:
            expected = [tuple(h) for h in theirs.decode(block, raw=True)]
        except hpack.exceptions.HPACKError:  # e.g. an index the table no longer holds
            with pytest.raises(hpack.exceptions.HPACKError):
                ours.decode(block)
            return  # a decoder is unusable after an error
        got = ours.decode(block)
        assert [tuple(h) for h in got] == expected
        got.append((b"x-mutated", b"1"))  # a caller's change to the list is its own
        assert [tuple(h) for h in ours.decode(block)] == [tuple(h) for h in theirs.decode(block, raw=True)]


def test_a_kept_block_is_checked_again_after_the_limits_change():
    block = hpack.Encoder().encode([(b"x-a", b"a" * 60)], huffman=False)
    decoder = ForwardingDecoder()
    assert decoder.decode(block) == decoder.decode(block) == [(b"x-a", b"a" * 60)]
    decoder.max_header_list_size = 50  # as h2 sets it when our SETTINGS are acknowledged
    with pytest.raises(hpack.exceptions.OversizedHeaderListError):
        decoder.decode(block)
    indexed = b"\x82"  # :method GET, from the static table: leaves the dynamic table alone
    decoder = ForwardingDecoder()
    decoder.decode(b"\x40\x01a\x01b")  # adds a: b (the table holds 34 bytes)
    assert decoder.decode(indexed) == [(b":method", b"GET")]
    decoder.max_allowed_table_size = 0  # the peer must shrink the table before its next block
    with pytest.raises(hpack.exceptions.InvalidTableSizeError):
        decoder.decode(indexed)


def test_endless_new_blocks_keep_the_cache_bounded_and_large_lists_are_not_kept():
    decoder = ForwardingDecoder()
    for n in range(1000):
        decoder.decode(ForwardingEncoder().encode([(b"x-n", str(n).encode())]))
    assert len(decoder._blocks) <= MAX_CACHED_BLOCKS
    decoder = ForwardingDecoder()
    decoder.decode(b"\x40\x01a" + encode_integer(1000, 7) + b"v" * 1000)  # a: 1000 bytes, added to the table
    repeated = b"\xbe" * 60  # a small block: that field 60 times, about 60 KB of headers
    assert len(decoder.decode(repeated)) == 60
    assert not decoder._blocks
