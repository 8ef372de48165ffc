"""A TLS ClientHello reader: the server name (SNI) and ALPN offer, from the bytes before the handshake.

The east-west listener peeks at a connection's first bytes with `parse_client_hello()` to decide,
before terminating TLS, whether the connection names a `passthrough` service (pump the bytes as
they are) or is to be terminated. The ClientHello may span several TLS records.

Pure: bytes in, a value out. No trio, no ssl, no sockets.
"""

from __future__ import annotations

import attrs

RECORD_HANDSHAKE = 0x16
HANDSHAKE_CLIENT_HELLO = 0x01
EXT_SERVER_NAME = 0x0000
EXT_ALPN = 0x0010
MAX_RECORD = 2**14 + 2048
# A ClientHello larger than this is refused rather than buffered (real ones are under 2 KiB;
# post-quantum key shares bring them near 1.5-2 KiB more).
MAX_CLIENT_HELLO_BYTES = 16 * 1024


class NotClientHello(ValueError):
    """The bytes are not (the start of) a well-formed TLS ClientHello."""


@attrs.frozen
class ClientHello:
    server_name: str | None
    alpn: tuple[str, ...] = ()


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise NotClientHello("truncated ClientHello")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def vector(self, length_bytes: int) -> bytes:
        n = self.u8() if length_bytes == 1 else self.u16()
        return self.take(n)

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos


def parse_client_hello(data: bytes) -> ClientHello | None:
    """The ClientHello at the start of `data`, or None when more bytes are needed.

    Raises `NotClientHello` when the bytes cannot be the start of a TLS ClientHello.
    """
    fragments = bytearray()
    offset = 0
    while True:
        if len(data) - offset < 5:
            break
        if data[offset] != RECORD_HANDSHAKE:
            raise NotClientHello("first record is not a TLS handshake")
        if data[offset + 1] != 0x03:
            raise NotClientHello("unknown TLS record version")
        length = int.from_bytes(data[offset + 3 : offset + 5], "big")
        if length == 0 or length > MAX_RECORD:
            raise NotClientHello("bad TLS record length")
        if len(data) - offset - 5 < length:
            fragments += data[offset + 5 :]
            break
        fragments += data[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if len(fragments) >= 4 and len(fragments) >= 4 + int.from_bytes(fragments[1:4], "big"):
            break
    if offset == 0 and len(data) >= 1 and data[0] != RECORD_HANDSHAKE:
        raise NotClientHello("first record is not a TLS handshake")
    if len(fragments) >= 1 and fragments[0] != HANDSHAKE_CLIENT_HELLO:
        raise NotClientHello("first handshake message is not a ClientHello")
    if len(fragments) < 4:
        if len(data) > MAX_CLIENT_HELLO_BYTES:
            raise NotClientHello("ClientHello too large")
        return None
    msg_len = int.from_bytes(fragments[1:4], "big")
    if msg_len > MAX_CLIENT_HELLO_BYTES:
        raise NotClientHello("ClientHello too large")
    if len(fragments) < 4 + msg_len:
        return None
    return _parse_body(bytes(fragments[4 : 4 + msg_len]))


def _parse_body(body: bytes) -> ClientHello:
    r = _Reader(body)
    r.take(2)  # legacy_version
    r.take(32)  # random
    if len(r.vector(1)) > 32:
        raise NotClientHello("session id longer than 32 bytes")
    suites = r.vector(2)
    if not suites or len(suites) % 2:
        raise NotClientHello("bad cipher suite list")
    if not r.vector(1):
        raise NotClientHello("no compression methods")
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    if r.remaining == 0:
        return ClientHello(None)
    extensions = _Reader(r.vector(2))
    if r.remaining:
        raise NotClientHello("bytes after the extensions")
    seen: set[int] = set()
    while extensions.remaining:
        ext_type = extensions.u16()
        ext = _Reader(extensions.vector(2))
        if ext_type in seen:
            raise NotClientHello(f"duplicate extension {ext_type}")
        seen.add(ext_type)
        if ext_type == EXT_SERVER_NAME:
            names = _Reader(ext.vector(2))
            if ext.remaining:
                raise NotClientHello("bytes after the server name list")
            while names.remaining:
                name_type = names.u8()
                name = names.vector(2)
                if name_type == 0 and server_name is None:
                    server_name = _host_name(name)
        elif ext_type == EXT_ALPN:
            protocols = _Reader(ext.vector(2))
            found = []
            while protocols.remaining:
                proto = protocols.vector(1)
                if not proto:
                    raise NotClientHello("empty ALPN protocol name")
                found.append(proto.decode("latin-1"))
            alpn = tuple(found)
    return ClientHello(server_name, alpn)


def _host_name(raw: bytes) -> str:
    if not raw or len(raw) > 255:
        raise NotClientHello("bad server name length")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise NotClientHello("server name is not ASCII") from None
    if not all(c.isalnum() or c in "-._" for c in text):
        raise NotClientHello("server name has characters a host name cannot have")
    return text.lower()


def build_client_hello(server_name: str | None, alpn: tuple[str, ...] = (), *, record_size: int = MAX_RECORD) -> bytes:
    """A minimal well-formed ClientHello (tests and probes), split into records of `record_size`."""
    ext = bytearray()
    if server_name is not None:
        name = server_name.encode()
        entry = b"\x00" + len(name).to_bytes(2, "big") + name
        lst = len(entry).to_bytes(2, "big") + entry
        ext += EXT_SERVER_NAME.to_bytes(2, "big") + len(lst).to_bytes(2, "big") + lst
    if alpn:
        protos = b"".join(len(p).to_bytes(1, "big") + p.encode() for p in alpn)
        lst = len(protos).to_bytes(2, "big") + protos
        ext += EXT_ALPN.to_bytes(2, "big") + len(lst).to_bytes(2, "big") + lst
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += len(ext).to_bytes(2, "big") + bytes(ext)
    msg = bytes([HANDSHAKE_CLIENT_HELLO]) + len(body).to_bytes(3, "big") + body
    out = bytearray()
    for i in range(0, len(msg), record_size):
        chunk = msg[i : i + record_size]
        out += bytes([RECORD_HANDSHAKE, 0x03, 0x01]) + len(chunk).to_bytes(2, "big") + chunk
    return bytes(out)
