"""Header rules of a proxy hop: what is stripped, what is added, and HTTP/1.1 <-> HTTP/2 mapping.

Hop-by-hop headers (RFC 9110 section 7.6.1, plus those a `Connection` header names) are
stripped both ways; `te: trailers` survives (gRPC needs it); `x-isthmus-peer-identity` arriving
from outside is always stripped (only the east-west listener sets it, from the verified
certificate). Names are lower-case bytes throughout. Pure.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",
    }
)
PEER_IDENTITY = b"x-isthmus-peer-identity"
REQUEST_ID = b"x-request-id"
CLUSTER = b"x-isthmus-cluster"
REASON = b"x-isthmus-reason"
# Only the east-west listener sets these (from the verified certificate); stripped from every request.
ISTHMUS_INTERNAL = frozenset({PEER_IDENTITY})

Headers = list[tuple[bytes, bytes]]


def strip_hop_by_hop(headers: Iterable[tuple[bytes, bytes]], *, keep_te_trailers: bool = True) -> Headers:
    """The end-to-end headers only (plus `te: trailers`); also drops `host` and pseudo-headers."""
    headers = list(headers)
    named: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    out: Headers = []
    te_trailers = False
    for name, value in headers:
        if name[:1] == b":" or name == b"host":
            continue
        if name == b"te":
            te_trailers = te_trailers or b"trailers" in value.lower()
            continue
        if name in HOP_BY_HOP or name in named or name in ISTHMUS_INTERNAL:
            continue
        out.append((name, value))
    if te_trailers and keep_te_trailers:
        out.append((b"te", b"trailers"))
    return out


_REQUEST_IDS = random.Random()  # seeded from the OS once: an id must be unique, not secret (no syscall per request)
os.register_at_fork(after_in_child=_REQUEST_IDS.seed)


def new_request_id() -> bytes:
    return b"%032x" % _REQUEST_IDS.getrandbits(128)


def request_protocol(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """Istio's `request_protocol` label: `grpc` for gRPC content types, else `http`."""
    for name, value in headers:
        if name == b"content-type":
            return "grpc" if value.startswith(b"application/grpc") else "http"
    return "http"


def response_headers_out(headers: Iterable[tuple[bytes, bytes]], cluster: bytes) -> Headers:
    """Upstream response headers as forwarded downstream: end-to-end only, `x-isthmus-cluster` set."""
    out = [(n, v) for n, v in strip_hop_by_hop(headers, keep_te_trailers=False) if n != CLUSTER]
    out.append((CLUSTER, cluster))
    return out
