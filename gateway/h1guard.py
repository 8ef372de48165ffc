"""HTTP/1.1 request-smuggling guard: checks a request head's raw bytes before h11 parses them.

h11 unfolds obsolete line folding and accepts `Content-Length` beside `Transfer-Encoding` (the
latter wins) and repeated identical `Content-Length`s. A proxy that forwards to other parsers must
refuse all three (RFC 9112 sections 5.2, 6.1 and 6.3): two parsers that frame a message differently
are how requests are smuggled. Pure: bytes in, a verdict out.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class HeadRejected:
    status: int
    reason: str


def find_head_end(buffer: bytes | bytearray, start: int = 0) -> int:
    """The index just past the blank line ending a message head, or -1 if it has not arrived."""
    crlf = buffer.find(b"\r\n\r\n", start)
    lf = buffer.find(b"\n\n", start)
    ends = [i + 4 for i in (crlf,) if i >= 0] + [i + 2 for i in (lf,) if i >= 0]
    return min(ends) if ends else -1


def check_request_head(head: bytes) -> HeadRejected | None:
    """None when the head may be handed to h11; otherwise the 400 to answer and why."""
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    content_lengths = 0
    transfer_encoding = False
    for line in lines[1:]:
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            return HeadRejected(400, "obs-fold")
        name, sep, _ = line.partition(b":")
        if not sep:
            continue  # h11 rejects it with its own 400
        name = name.lower()
        if name == b"content-length":
            content_lengths += 1
        elif name == b"transfer-encoding":
            transfer_encoding = True
    if content_lengths > 1:
        return HeadRejected(400, "duplicate-content-length")
    if content_lengths and transfer_encoding:
        return HeadRejected(400, "content-length-with-transfer-encoding")
    return None
