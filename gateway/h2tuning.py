"""The parts of h2 the gateway replaces or narrows because it only forwards: pure, no I/O.

Owns:
- `ForwardingEncoder`: an HPACK encoder that never adds to the dynamic table and never uses Huffman
  coding. Every field is either a full static-table match (one byte) or a literal without indexing
  (never-indexed for credentials and for fields the peer marked so). With no table state, a field
  name's encoding is a pure function of the name and is cached; a header block costs one dict
  lookup and a join per field instead of hpack's table search, Huffman coding and table eviction.
  The bytes on the wire are a little larger, which is cheap on loopback and LANs where the CPU is
  the limit (PERF-NOTES).
- `ForwardingDecoder`: hpack's `Decoder` with a one-pass `decode` (the same table, limits and
  errors; fields come back as plain tuples, never-indexed ones as `NeverIndexedHeaderTuple` so the
  encoder keeps them never-indexed). hpack's own loop slices memoryviews and copies per field. A
  block that leaves the table as it was is kept and not decoded again while the table stays so.
- `check_request_headers` / `check_trailers`: the inbound checks that protect the gateway and its
  upstreams from hostile HTTP/2 header blocks (RFC 9113 section 8.2 characters, connection-specific
  fields, pseudo-header rules, `:authority`/`host` agreement), the same rules as h2's
  `validate_headers` in one pass instead of seven chained generators. A violation is a
  `MalformedHeaders` naming the field; the connection answers it with RST_STREAM(PROTOCOL_ERROR).
  `RequestChecks` runs them for one connection, remembering the names and lists that passed.
- `ForwardingH2Connection`: h2's `H2Connection` with stream counts that do not walk every stream
  per new stream (h2's `_open_streams` does, to reap closed ones), a frame buffer that builds the
  common received frames (unpadded DATA, complete unpadded HEADERS) without hyperframe's parsing
  chain, without copying a received block into its buffer first or moving the buffer per frame,
  DATA/HEADERS serialised directly, and the bytes to send handed over without a copy.
- `tune_h2_for_forwarding()`: process-wide, h2's streams build the DATA and HEADERS frames they
  send without hyperframe's constructor chain (same classes' behaviour, same bytes) and skip
  re-encoding header fields that are already bytes; h2's state-machine tables are keyed by enums
  hashed in C (identity) instead of `Enum.__hash__`; `silence_hpack_debug_logging()`: hpack's
  per-field debug logging becomes a no-op (about 90 logger calls per proxied request).

Must not import trio (pure; tested without sockets) nor anything from `federation`.
"""

from __future__ import annotations

import re
import struct
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.frame_buffer
import h2.stream
import h2.utilities
import hpack.exceptions
import hpack.hpack
import hpack.huffman_table
import hpack.struct
import hpack.table
import hyperframe.flags
import hyperframe.frame
from h2.connection import AllowedStreamIDs, ConnectionInputs
from h2.stream import StreamInputs

_STATIC_TABLE = hpack.table.HeaderTable.STATIC_TABLE
# Full (name, value) matches are sent as one indexed byte; the first entry wins, as in hpack.
_STATIC_FULL: dict[tuple[bytes, bytes], bytes] = {}
_STATIC_NAME: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(_STATIC_TABLE, start=1):
    _STATIC_FULL.setdefault((_name, _value), bytes((0x80 | _index,)))
    _STATIC_NAME.setdefault(_name, _index)

# Field names whose values are credentials: sent never-indexed so no intermediary compresses them
# into a shared table (h2 does the same when outbound normalisation is on).
SENSITIVE_NAMES = frozenset({b"authorization", b"proxy-authorization"})
# Names cached per connection; a hostile peer sending endless new names only stops the caching.
MAX_CACHED_NAMES = 512
# Received header blocks kept per connection (see `ForwardingDecoder`): a hostile peer sending endless
# new blocks only starts the cache over, and a block longer than `MAX_CACHED_BLOCK_BYTES`, or whose
# header list is larger than `MAX_CACHED_LIST_SIZE` (counted as for SETTINGS_MAX_HEADER_LIST_SIZE), is
# not kept: at most ~50 KiB per connection.
MAX_CACHED_BLOCKS = 16
MAX_CACHED_BLOCK_BYTES = 1024
MAX_CACHED_LIST_SIZE = 2048
# Request header lists a connection remembers as checked (`RequestChecks`).
MAX_KNOWN_REQUESTS = 16
_TABLE_SIZE_ZERO = b"\x20"  # dynamic table size update to 0 (RFC 7541 section 6.3)


def encode_integer(value: int, prefix_bits: int, first_byte: int = 0) -> bytes:
    """RFC 7541 section 5.1 integer with `prefix_bits` of prefix, the flag bits in `first_byte`."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first_byte | value,))
    out = bytearray((first_byte | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal_name(name: bytes, never_indexed: bool) -> bytes:
    """The representation byte(s) and name of a literal field without indexing (or never indexed)."""
    flag = 0x10 if never_indexed else 0x00
    index = _STATIC_NAME.get(name)
    if index is not None:
        return encode_integer(index, 4, flag)
    return bytes((flag,)) + encode_integer(len(name), 7) + name


class ForwardingEncoder:
    """A stateless HPACK encoder with the interface h2 uses (`encode`, `header_table_size`)."""

    __slots__ = ("_names", "_never_names", "_table_size", "_announce_size")

    def __init__(self) -> None:
        self._names: dict[bytes, bytes] = {}
        self._never_names: dict[bytes, bytes] = {}
        self._table_size = hpack.table.HeaderTable.DEFAULT_SIZE
        self._announce_size = False

    @property
    def header_table_size(self) -> int:
        return self._table_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        # The peer changed SETTINGS_HEADER_TABLE_SIZE: we keep using no table at all, and say so
        # (size 0) at the start of the next block, as RFC 7541 section 4.2 asks after a change.
        self._table_size = value
        self._announce_size = True

    def encode(self, headers: list[tuple[bytes, bytes]], huffman: bool = False) -> bytes:
        """One header block; `headers` are (name, value) byte pairs (h2 has encoded them)."""
        parts: list[bytes] = []
        if self._announce_size:
            self._announce_size = False
            parts.append(_TABLE_SIZE_ZERO)
        append = parts.append
        static_full = _STATIC_FULL
        names = self._names
        for header in headers:
            name = header[0]
            value = header[1]
            never = type(header) is hpack.struct.NeverIndexedHeaderTuple or name in SENSITIVE_NAMES
            if not never:
                indexed = static_full.get((name, value))
                if indexed is not None:
                    append(indexed)
                    continue
                prefix = names.get(name)
                if prefix is None:
                    prefix = _literal_name(name, False)
                    if len(names) < MAX_CACHED_NAMES:
                        names[name] = prefix
            else:
                prefix = self._never_names.get(name)
                if prefix is None:
                    prefix = _literal_name(name, True)
                    if len(self._never_names) < MAX_CACHED_NAMES:
                        self._never_names[name] = prefix
            append(prefix)
            size = len(value)
            append(bytes((size,)) if size < 127 else encode_integer(size, 7))
            append(value)
        return b"".join(parts)


class _ForgetsKeptBlocks:
    """A `ForwardingDecoder` limit whose change forgets the blocks the decoder kept."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.attribute = "_" + name

    def __get__(self, decoder: Any, owner: type | None = None) -> Any:
        return self if decoder is None else getattr(decoder, self.attribute)

    def __set__(self, decoder: Any, value: int) -> None:
        setattr(decoder, self.attribute, value)
        decoder._blocks.clear()


class ForwardingDecoder(hpack.hpack.Decoder):
    """hpack's `Decoder` with a faster `decode`; table, limits and errors are hpack's.

    A peer that repeats itself sends the same block again and again (a load balancer's or a
    client's request headers, an upstream's response headers: all indexed, or literal without
    indexing): a block that leaves the dynamic table as it was decodes the same way until the table
    changes, so up to `MAX_CACHED_BLOCKS` such blocks are kept, and any block that changes the
    table forgets them."""

    def __init__(self, max_header_list_size: int = hpack.hpack.DEFAULT_MAX_HEADER_LIST_SIZE) -> None:
        self._blocks: dict[bytes, tuple[tuple[bytes, bytes], ...]] = {}
        self._table_changed = False
        self._list_size = 0  # of the block decoded last
        super().__init__(max_header_list_size=max_header_list_size)

    # A change of the limits or the table's size forgets the kept blocks: they were checked against
    # the old ones (h2 sets these when our SETTINGS are acknowledged).
    max_allowed_table_size = _ForgetsKeptBlocks()
    max_header_list_size = _ForgetsKeptBlocks()

    @property
    def header_table_size(self) -> int:
        return self.header_table.maxsize

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self.header_table.maxsize = value
        self._blocks.clear()

    def decode(self, data: bytes, raw: bool = True) -> list[tuple[bytes, bytes]]:  # type: ignore[override]
        """Decode one header block to (name, value) byte pairs (`raw` is always true here)."""
        if type(data) is not bytes:
            data = bytes(data)
        blocks = self._blocks
        known = blocks.get(data)
        if known is not None:
            return list(known)
        self._table_changed = False
        try:
            headers = self._decode(data)
        except IndexError:
            raise hpack.exceptions.HPACKDecodingError("truncated header block") from None
        finally:
            if self._table_changed:
                blocks.clear()
        if not self._table_changed and len(data) <= MAX_CACHED_BLOCK_BYTES and self._list_size <= MAX_CACHED_LIST_SIZE:
            if len(blocks) >= MAX_CACHED_BLOCKS:
                blocks.clear()
            blocks[data] = tuple(headers)
        return headers

    def _decode(self, data: bytes) -> list[tuple[bytes, bytes]]:
        table = self.header_table
        static = _STATIC_TABLE
        headers: list[tuple[bytes, bytes]] = []
        append = headers.append
        end = len(data)
        pos = 0
        inflated = 0
        limit = self.max_header_list_size
        while pos < end:
            first = data[pos]
            if first & 0x80:  # indexed field
                index = first & 0x7F
                if index == 0x7F:
                    index, used = _decode_integer(data, pos, 7)
                    pos += used
                else:
                    pos += 1
                header: tuple[bytes, bytes] = static[index - 1] if 0 < index <= 61 else table.get_by_index(index)
            elif first & 0x40:  # literal, added to the table
                name, value, pos = self._literal(data, pos, 6)
                self._table_changed = True
                table.add(name, value)
                header = (name, value)
            elif first & 0x20:  # table size update
                if headers:
                    raise hpack.exceptions.HPACKDecodingError("table size update not at the start of the block")
                size, used = _decode_integer(data, pos, 5)
                pos += used
                if size > self.max_allowed_table_size:
                    raise hpack.exceptions.InvalidTableSizeError("encoder exceeded max allowable table size")
                self._table_changed = True
                table.maxsize = size
                continue
            else:  # literal without indexing (0x00) or never indexed (0x10)
                name, value, pos = self._literal(data, pos, 4)
                header = hpack.struct.NeverIndexedHeaderTuple(name, value) if first & 0x10 else (name, value)
            append(header)
            inflated += len(header[0]) + len(header[1]) + 32
            if inflated > limit:
                raise hpack.exceptions.OversizedHeaderListError(
                    f"A header list larger than {limit} has been received")
        self._assert_valid_table_size()
        self._list_size = inflated
        return headers

    def _literal(self, data: bytes, pos: int, prefix_bits: int) -> tuple[bytes, bytes, int]:
        mask = (1 << prefix_bits) - 1
        index = data[pos] & mask
        if index == mask:
            index, used = _decode_integer(data, pos, prefix_bits)
            pos += used
        else:
            pos += 1
        if index:
            name = self.header_table.get_by_index(index)[0]
        else:
            name, pos = _decode_string(data, pos)
        value, pos = _decode_string(data, pos)
        return name, value, pos


def _decode_integer(data: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """An RFC 7541 integer at `pos` and the bytes it took (hpack's checks and errors)."""
    return hpack.hpack.decode_integer(data[pos:pos + 8], prefix_bits)


def _decode_string(data: bytes, pos: int) -> tuple[bytes, int]:
    first = data[pos]
    length = first & 0x7F
    if length == 0x7F:
        length, used = _decode_integer(data, pos, 7)
        pos += used
    else:
        pos += 1
    text = data[pos:pos + length]
    if len(text) != length:
        raise hpack.exceptions.HPACKDecodingError("truncated header block")
    if first & 0x80:
        text = hpack.huffman_table.decode_huffman(text)
    return text, pos + length


# -- inbound checks --------------------------------------------------------------------------------


class MalformedHeaders(ValueError):
    """A received header block breaks RFC 9113 section 8 (a stream error: PROTOCOL_ERROR)."""


# RFC 9113 section 8.2.1: a name has no character in 0x00-0x20, 0x41-0x5a (upper case), 0x7f-0xff,
# and no colon except a pseudo-header's leading one.
_NAME_OK = re.compile(rb"[\x21-\x39\x3b-\x40\x5b-\x7e]+").fullmatch
# A value has no NUL, CR or LF anywhere and does not start or end with a space or tab.
_VALUE_BAD = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z").search
CONNECTION_HEADERS = frozenset({b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding",
                                b"upgrade"})
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})


def _check_field(name: bytes, value: bytes) -> None:
    if not _NAME_OK(name):
        raise MalformedHeaders(f"illegal header name {name[:64]!r}")
    if value and _VALUE_BAD(value):
        raise MalformedHeaders(f"illegal characters in the value of {name[:64]!r}")
    if name in CONNECTION_HEADERS:
        raise MalformedHeaders(f"connection-specific header {name!r}")
    if name == b"te" and value.lower() != b"trailers":
        raise MalformedHeaders(f"te: {value[:64]!r} (only 'trailers' is allowed)")


def check_request_headers(headers: list[tuple[bytes, bytes]], known_names: set[bytes] | None = None) -> None:
    """Raise `MalformedHeaders` unless `headers` is a well-formed HTTP/2 request header block.

    `known_names`, when given, caches the regular field names already found legal (a connection's
    clients repeat the same few names), so they are not matched again.
    """
    pseudo: dict[bytes, bytes] = {}
    host = None
    regular_seen = False
    for header in headers:
        name = header[0]
        value = header[1]
        if name[:1] == b":":
            if regular_seen:
                raise MalformedHeaders(f"pseudo-header {name!r} after a regular header")
            if name not in _REQUEST_PSEUDO:
                raise MalformedHeaders(f"pseudo-header {name!r} not allowed in a request")
            if name in pseudo:
                raise MalformedHeaders(f"duplicate pseudo-header {name!r}")
            if value and _VALUE_BAD(value):
                raise MalformedHeaders(f"illegal characters in the value of {name!r}")
            pseudo[name] = value
            continue
        regular_seen = True
        if known_names is not None and name in known_names:
            if value and _VALUE_BAD(value):
                raise MalformedHeaders(f"illegal characters in the value of {name[:64]!r}")
            if name == b"te" and value.lower() != b"trailers":
                raise MalformedHeaders(f"te: {value[:64]!r} (only 'trailers' is allowed)")
        else:
            _check_field(name, value)
            if known_names is not None and len(known_names) < MAX_CACHED_NAMES:
                known_names.add(name)
        if name == b"host":
            if host is not None:
                raise MalformedHeaders("more than one host header")
            host = value
    method = pseudo.get(b":method")
    if method is None:
        raise MalformedHeaders("request without :method")
    if method == b"CONNECT" and b":protocol" not in pseudo:
        if b":scheme" in pseudo or b":path" in pseudo:
            raise MalformedHeaders("CONNECT request with :scheme or :path")
    else:
        if b":protocol" in pseudo and method != b"CONNECT":
            raise MalformedHeaders(":protocol in a request that is not CONNECT")
        if b":scheme" not in pseudo or not pseudo.get(b":path"):
            raise MalformedHeaders("request without :scheme or :path")
    authority = pseudo.get(b":authority")
    if authority is None and host is None:
        raise MalformedHeaders("request without :authority or host")
    if authority is not None and host is not None and authority != host:
        raise MalformedHeaders(f":authority {authority[:64]!r} and host {host[:64]!r} disagree")


class RequestChecks:
    """`check_request_headers` for one connection, remembering what passed: the regular field names
    (a connection's clients repeat the same few) and, up to `MAX_KNOWN_REQUESTS`, whole header lists
    of at most `MAX_CACHED_LIST_SIZE` (a client that repeats itself sends the same list again and
    again; the check is a function of the list alone)."""

    __slots__ = ("names", "lists")

    def __init__(self) -> None:
        self.names: set[bytes] = set()
        self.lists: set[tuple[tuple[bytes, bytes], ...]] = set()

    def check(self, headers: list[tuple[bytes, bytes]]) -> None:
        key = tuple(headers)
        if key in self.lists:
            return
        check_request_headers(headers, self.names)
        if len(self.lists) < MAX_KNOWN_REQUESTS and sum([len(n) + len(v) + 32 for n, v in key]) <= MAX_CACHED_LIST_SIZE:
            self.lists.add(key)


def check_trailers(headers: list[tuple[bytes, bytes]]) -> None:
    """Raise `MalformedHeaders` unless `headers` is a well-formed trailer block (no pseudo-headers)."""
    for header in headers:
        name = header[0]
        if name[:1] == b":":
            raise MalformedHeaders(f"pseudo-header {name!r} in trailers")
        _check_field(name, header[1])


# -- stream counting -------------------------------------------------------------------------------

# Closed streams h2 still holds are reaped by a full walk once the cheap count reaches this (or the
# peer's limit): the walk stays rare, and what it keeps is bounded.
REAP_AT = 512


_DataFrame = hyperframe.frame.DataFrame
_HeadersFrame = hyperframe.frame.HeadersFrame
_HEADER = struct.Struct(">HBBBL")  # hyperframe's frame header layout: length (24 bits), type, flags, stream


def _flag_names(frame_class: type[hyperframe.frame.Frame]) -> list[frozenset[str]]:
    return [frozenset(name for name, bit in frame_class.defined_flags if byte & bit) for byte in range(256)]


_DATA_FLAGS = _flag_names(_DataFrame)
_HEADERS_FLAGS = _flag_names(_HeadersFrame)


class FastFrameBuffer(h2.frame_buffer.FrameBuffer):
    """h2's `FrameBuffer`, building unpadded DATA and complete unpadded, unprioritised HEADERS frames
    directly (the same objects hyperframe's parser would make: their `flags` a frozenset of flag
    names, which is all h2 reads from received frames). Every other frame, a frame on stream 0 and
    anything inside a CONTINUATION sequence go through h2's own parsing and checks.

    A run of DATA frames on one stream that is complete in the buffer is one frame (payloads joined,
    flags of the last; it ends at END_STREAM): h2 accounts for it as for the frames one by one (the
    same window and content-length checks on the sum), and a 64 KiB response from an upstream that
    sends 16 KiB frames is one event, not four, with its payload copied once.

    Copies are kept down: a block received while nothing else is pending is parsed where it lies
    (not appended to the buffer first), and each frame's payload is copied out once; frames are not
    cut from the front of the buffer one by one (each cut moved everything behind it: ~160 KiB for a
    64 KiB read) but taken at an advancing offset. What is left when a frame is incomplete, or when
    h2's own parser must take over, moves to the buffer (`_spill`)."""

    def __init__(self, server: bool = False) -> None:
        super().__init__(server=server)
        self._src = b""  # a received block parsed in place
        self._pos = 0  # where the next frame starts, in `_src` when it is set, else in `_data`

    def add_data(self, data: bytes) -> None:  # type: ignore[override]
        if self._preamble_len or self._data or self._src or type(data) is not bytes:
            self._spill()
            super().add_data(data)
            return
        self._src = data
        self._pos = 0

    def _spill(self) -> None:
        """Leave `_data` holding exactly the bytes not yet taken, as h2's parser expects."""
        if self._src:
            with memoryview(self._src) as view:
                self._data += view[self._pos:]
            self._src = b""
        elif self._pos:
            del self._data[:self._pos]
        self._pos = 0

    def __next__(self) -> hyperframe.frame.Frame:
        src = self._src
        data = src if src else self._data
        pos = self._pos
        end = len(data)
        if end - pos < 9 or self._headers_buffer:
            self._spill()
            return super().__next__()
        kind = data[pos + 3]
        flags = data[pos + 4]
        if kind == 0x0 and not flags & 0x08:
            frame_class: type[hyperframe.frame.Frame] = _DataFrame
        elif kind == 0x1 and flags & 0x2C == 0x04:  # END_HEADERS, not PADDED, not PRIORITY
            frame_class = _HeadersFrame
        else:
            self._spill()
            return super().__next__()
        stream_id = ((data[pos + 5] << 24) | (data[pos + 6] << 16) | (data[pos + 7] << 8) | data[pos + 8]) & 0x7FFFFFFF
        if not stream_id:
            self._spill()
            return super().__next__()
        length = (data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2]
        start = pos + 9
        stop = start + length
        if end < stop:
            self._spill()
            raise StopIteration
        self._validate_frame_length(length)
        frame = frame_class.__new__(frame_class)
        frame.stream_id = stream_id
        frame.pad_length = 0  # type: ignore[attr-defined]
        run = None
        if frame_class is _DataFrame and not flags & 0x01:
            run, stop, flags = self._data_run(data, start, stop, end, flags)
        if run is not None:
            with memoryview(data) as view:
                frame.data = b"".join([view[a:b] for a, b in run])  # type: ignore[attr-defined]
            length = len(frame.data)  # type: ignore[attr-defined]
        elif src:
            frame.data = src[start:stop]  # type: ignore[attr-defined]
        else:
            with memoryview(data) as view:  # one copy (slicing the bytearray, then bytes(), made two)
                frame.data = bytes(view[start:stop])  # type: ignore[attr-defined]
        frame.body_len = length
        if frame_class is _DataFrame:
            frame.flags = _DATA_FLAGS[flags]  # type: ignore[assignment]
        else:
            frame.flags = _HEADERS_FLAGS[flags]  # type: ignore[assignment]
            frame.depends_on = 0  # type: ignore[attr-defined]
            frame.stream_weight = 0  # type: ignore[attr-defined]
            frame.exclusive = False  # type: ignore[attr-defined]
        if stop == end:
            if src:
                self._src = b""
            else:
                data.clear()  # type: ignore[union-attr]
            self._pos = 0
        else:
            self._pos = stop
        return frame

    def _data_run(self, data: bytes | bytearray, start: int, stop: int, end: int,
                  flags: int) -> tuple[list[tuple[int, int]] | None, int, int]:
        """The unpadded DATA frames complete in `data` that follow a DATA frame without END_STREAM
        (its payload at `start`:`stop`, its `flags`) on the same stream, up to and including one
        with END_STREAM: (payload ranges of the run, the offset after it, the last frame's flags),
        or (None, stop, flags) when none follows."""
        sid = data[start - 4:start]
        run = None
        while end - stop >= 9 and data[stop + 3] == 0x0 and not data[stop + 4] & 0x08 and data[stop + 5:stop + 9] == sid:
            length = (data[stop] << 16) | (data[stop + 1] << 8) | data[stop + 2]
            nxt = stop + 9 + length
            if end < nxt:
                break
            self._validate_frame_length(length)
            if run is None:
                run = [(start, stop)]
            run.append((stop + 9, nxt))
            flags = data[stop + 4]
            stop = nxt
            if flags & 0x01:
                break
        return run, stop, flags


def _new_flags(valid: frozenset[str]) -> hyperframe.flags.Flags:
    flags = hyperframe.flags.Flags.__new__(hyperframe.flags.Flags)
    flags._valid_flags = valid  # type: ignore[assignment]
    flags._flags = set()
    return flags


_DATA_VALID = frozenset(name for name, _ in _DataFrame.defined_flags)
_HEADERS_VALID = frozenset(name for name, _ in _HeadersFrame.defined_flags)


class SentDataFrame(_DataFrame):
    """A DATA frame h2 builds to send: hyperframe's, without its constructor chain."""

    def __init__(self, stream_id: int, data: bytes = b"", **kwargs: object) -> None:
        if kwargs or not stream_id:
            super().__init__(stream_id, data, **kwargs)  # type: ignore[arg-type]
            return
        self.stream_id = stream_id
        self.flags = _new_flags(_DATA_VALID)
        self.body_len = 0
        self.pad_length = 0
        self.data = data


class SentHeadersFrame(_HeadersFrame):
    """A HEADERS frame h2 builds to send: hyperframe's, without its constructor chain."""

    def __init__(self, stream_id: int, data: bytes = b"", **kwargs: object) -> None:
        if kwargs or not stream_id:
            super().__init__(stream_id, data, **kwargs)  # type: ignore[arg-type]
            return
        self.stream_id = stream_id
        self.flags = _new_flags(_HEADERS_VALID)
        self.body_len = 0
        self.pad_length = 0
        self.depends_on = 0
        self.stream_weight = 0
        self.exclusive = False
        self.data = data


_h2_utf8_encode_headers = h2.utilities.utf8_encode_headers


def utf8_encode_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """h2's `utf8_encode_headers`, keeping fields that are already bytes as they are."""
    out = []
    for header in headers:
        if type(header[0]) is bytes and type(header[1]) is bytes:
            out.append(header)
        else:
            out.extend(_h2_utf8_encode_headers([header]))
    return out


# The plain `Enum`s keying h2's state-machine tables ((state, input) -> transition), looked up for
# every frame sent and received: 22 times per proxied request.
_STATE_MACHINE_ENUMS = (h2.stream.StreamInputs, h2.connection.ConnectionState, h2.connection.ConnectionInputs)


def _identity_hashed_state_machine_keys() -> None:
    """`Enum.__hash__` is Python code (a third of a microsecond a call); these members compare by
    identity, so the identity hash is equivalent. The tables are rebuilt so that their keys are
    stored under the new hashes (copying a dict would keep the old ones)."""
    if all(enum_class.__hash__ is object.__hash__ for enum_class in _STATE_MACHINE_ENUMS):
        return
    for enum_class in _STATE_MACHINE_ENUMS:
        enum_class.__hash__ = object.__hash__  # type: ignore[method-assign]
    h2.stream._transitions = {key: value for key, value in h2.stream._transitions.items()}
    machine = h2.connection.H2ConnectionStateMachine
    machine._transitions = {key: value for key, value in machine._transitions.items()}


def tune_h2_for_forwarding() -> None:
    """Make h2's streams send `SentDataFrame`/`SentHeadersFrame` and skip re-encoding byte headers;
    h2's state-machine tables hash their keys in C."""
    h2.stream.DataFrame = SentDataFrame  # type: ignore[misc]
    h2.stream.HeadersFrame = SentHeadersFrame  # type: ignore[misc]
    h2.stream.utf8_encode_headers = utf8_encode_headers
    _identity_hashed_state_machine_keys()


_FAST_SERIALIZED = {_DataFrame: 0x0, SentDataFrame: 0x0, _HeadersFrame: 0x1, SentHeadersFrame: 0x1}


def serialize_frame(frame: hyperframe.frame.Frame) -> bytes:
    """A frame's bytes: unpadded DATA and HEADERS (no priority) directly, the rest by hyperframe."""
    frame_type = _FAST_SERIALIZED.get(type(frame))
    if frame_type is not None:
        flags = frame.flags
        if "PADDED" not in flags and "PRIORITY" not in flags:
            body = frame.data  # type: ignore[attr-defined]
            if type(body) is not bytes:
                body = bytes(body)
            size = len(body)
            frame.body_len = size
            bits = 0x01 if "END_STREAM" in flags else 0
            if "END_HEADERS" in flags:
                bits |= 0x04
            return _HEADER.pack(size >> 8, size & 0xFF, frame_type, bits, frame.stream_id & 0x7FFFFFFF) + body
    return frame.serialize()


def headers_frames(stream_id: int, block: bytes, end_stream: bool, max_frame_size: int) -> bytes:
    """A header block as one HEADERS frame, or HEADERS and CONTINUATION frames when it is larger
    than the peer's frame size (END_STREAM on the first, END_HEADERS on the last)."""
    stream_id &= 0x7FFFFFFF
    first_flags = 0x01 if end_stream else 0
    size = len(block)
    if size <= max_frame_size:
        return _HEADER.pack(size >> 8, size & 0xFF, 0x1, first_flags | 0x04, stream_id) + block
    out = []
    for start in range(0, size, max_frame_size):
        piece = block[start:start + max_frame_size]
        last = start + max_frame_size >= size
        kind, bits = (0x1, first_flags) if start == 0 else (0x9, 0)
        if last:
            bits |= 0x04
        out.append(_HEADER.pack(len(piece) >> 8, len(piece) & 0xFF, kind, bits, stream_id) + piece)
    return b"".join(out)


class ForwardingH2Connection(h2.connection.H2Connection):
    """`H2Connection` whose open-stream counts are cheap upper bounds.

    h2 counts open streams by walking every stream it holds (and reaps the closed ones) each time
    a stream is opened in either direction. The gateway uses one direction per connection (no
    server push) and removes each stream's h2 state when its exchange ends (`reap`), so the number
    of streams h2 holds bounds the open count from above; only when that bound reaches the limit
    being checked does h2's exact walk run (which also reaps streams nobody removed).
    """

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config=config)
        self.incoming_buffer = FastFrameBuffer(server=not config.client_side)
        # Which stream ids each side opens (h2 builds the enum member from the config per frame).
        self._outbound_ids = AllowedStreamIDs(config.client_side)
        self._inbound_ids = AllowedStreamIDs(not config.client_side)

    def data_to_send(self, amount: int | None = None) -> bytes:
        """What is queued to send, handed over rather than copied (a bytearray: h2 copies it to
        bytes, 64 KiB per large response) unless `amount` asks for a part."""
        if amount is not None:
            return super().data_to_send(amount)
        data = self._data_to_send
        self._data_to_send = bytearray()
        return data  # type: ignore[return-value]

    def _prepare_for_sending(self, frames: list[hyperframe.frame.Frame]) -> None:
        if not frames:
            return
        if len(frames) == 1:
            self._data_to_send += serialize_frame(frames[0])
        else:
            self._data_to_send += b"".join([serialize_frame(frame) for frame in frames])

    # HEADERS without hyperframe objects or validation flags (inbound and outbound validation and
    # normalisation are off in `H2Conn`'s configuration; `check_request_headers` checks instead).
    # The stream state machine runs exactly as in h2; anything unusual (PRIORITY) takes h2's path.

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]],  # type: ignore[override]
                     end_stream: bool = False, priority_weight: int | None = None,
                     priority_depends_on: int | None = None, priority_exclusive: bool | None = None) -> None:
        if priority_weight is not None or priority_depends_on is not None or priority_exclusive is not None:
            return super().send_headers(stream_id, headers, end_stream, priority_weight, priority_depends_on,
                                        priority_exclusive)
        stream = self.streams.get(stream_id)
        if stream is None:
            limit = self.remote_settings.max_concurrent_streams
            count = self.open_outbound_streams
            if count + 1 > limit:
                raise h2.exceptions.TooManyStreamsError(f"Max outbound streams is {limit}, {count} open")
        self.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
        if stream is None:
            stream = self._get_or_create_stream(stream_id, self._outbound_ids)
        machine = stream.state_machine
        headers = utf8_encode_headers(headers)
        if not machine.client and h2.utilities.is_informational_response(headers):
            if end_stream:
                raise h2.exceptions.ProtocolError("Cannot set END_STREAM on informational responses.")
            machine.process_input(StreamInputs.SEND_INFORMATIONAL_HEADERS)
        else:
            machine.process_input(StreamInputs.SEND_HEADERS)
        block = self.encoder.encode(headers)
        if end_stream:
            machine.process_input(StreamInputs.SEND_END_STREAM)
        if machine.trailers_sent and not end_stream:
            raise h2.exceptions.ProtocolError("Trailers must have END_STREAM set.")
        if machine.client:  # set by the SEND_HEADERS transition on a stream this side opened
            if stream._authority is None:
                stream._authority = h2.utilities.authority_from_headers(headers)
            stream.request_method = h2.utilities.extract_method_header(headers)
        else:
            stream.request_method = None  # what h2 finds in headers a server sends: they carry no :method
        self._data_to_send += headers_frames(stream_id, block, end_stream, stream.max_outbound_frame_size)

    def send_data_run(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """Send `data` (within both flow-control windows) as consecutive DATA frames of the peer's
        frame size, END_STREAM on the last (empty `data`: one empty frame): the bytes, windows and
        states of calling h2's `send_data` once per frame, with the state machines run once (a DATA
        frame does not move them) and no frame objects."""
        size = len(data)
        if size:  # as h2: an empty frame is not flow-controlled
            window = self.local_flow_control_window(stream_id)  # StreamClosedError for a closed stream
            if size > window:
                raise h2.exceptions.FlowControlError(f"Cannot send {size} bytes, flow control window is {window}")
        self.state_machine.process_input(ConnectionInputs.SEND_DATA)
        stream = self.streams[stream_id]
        machine = stream.state_machine
        machine.process_input(StreamInputs.SEND_DATA)
        if end_stream:
            machine.process_input(StreamInputs.SEND_END_STREAM)
        stream.outbound_flow_control_window -= size
        self.outbound_flow_control_window -= size
        stream_id &= 0x7FFFFFFF
        frame_size = self.max_outbound_frame_size
        if size <= frame_size:
            self._data_to_send += _HEADER.pack(size >> 8, size & 0xFF, 0x0, 0x01 if end_stream else 0, stream_id)
            self._data_to_send += data
            return
        view = memoryview(data)
        out = self._data_to_send
        for start in range(0, size, frame_size):
            piece = view[start:start + frame_size]
            flags = 0x01 if end_stream and start + frame_size >= size else 0
            out += _HEADER.pack(len(piece) >> 8, len(piece) & 0xFF, 0x0, flags, stream_id)
            out += piece

    def _receive_headers_frame(self, frame: hyperframe.frame.HeadersFrame) -> tuple[list, list]:
        flags = frame.flags
        if "PRIORITY" in flags:
            return super()._receive_headers_frame(frame)
        if frame.stream_id not in self.streams:
            limit = self.local_settings.max_concurrent_streams
            count = self.open_inbound_streams
            if count + 1 > limit:
                raise h2.exceptions.TooManyStreamsError(f"Max inbound streams is {limit}, {count} open")
        headers = h2.connection._decode_headers(self.decoder, frame.data)
        events = self.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
        stream = self._get_or_create_stream(frame.stream_id, self._inbound_ids)
        machine = stream.state_machine
        end_stream = "END_STREAM" in flags
        if h2.utilities.is_informational_response(headers):
            if end_stream:
                raise h2.exceptions.ProtocolError("Cannot set END_STREAM on informational responses")
            received = machine.process_input(StreamInputs.RECV_INFORMATIONAL_HEADERS)
        else:
            received = machine.process_input(StreamInputs.RECV_HEADERS)
        first = received[0]
        if end_stream:
            ended = machine.process_input(StreamInputs.RECV_END_STREAM)
            first.stream_ended = ended[0]
            received += ended
        stream._initialize_content_length(headers)
        if type(first) is h2.events.TrailersReceived and not end_stream:
            raise h2.exceptions.ProtocolError("Trailers must have END_STREAM set")
        first.headers = headers
        return [], events + received

    def _bounded_count(self, remainder: int, limit: int) -> int:
        held = len(self.streams)
        if held < limit and held < REAP_AT:
            return held
        return self._open_streams(remainder)

    @property
    def open_outbound_streams(self) -> int:
        return self._bounded_count(int(self.config.client_side), self.remote_settings.max_concurrent_streams)

    @property
    def open_inbound_streams(self) -> int:
        return self._bounded_count(int(not self.config.client_side), self.local_settings.max_concurrent_streams)

    def reap(self, stream_id: int) -> None:
        """Drop a closed stream's state now, as h2's walk would (a late frame for it is still
        recognised as one for a closed stream)."""
        stream = self.streams.get(stream_id)
        if stream is not None and stream.closed:
            del self.streams[stream_id]
            self._closed_streams[stream_id] = stream.closed_by


class _SilentLog:
    """Stands in for hpack's module logger: hpack logs every integer and field it codes at debug
    level, about 90 calls per proxied request, each costing a `Logger.isEnabledFor` check."""

    def debug(self, *args: object, **kwargs: object) -> None:
        pass


def silence_hpack_debug_logging() -> None:
    hpack.hpack.log = _SilentLog()  # type: ignore[assignment]
