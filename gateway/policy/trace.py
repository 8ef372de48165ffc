"""W3C Trace Context (https://www.w3.org/TR/trace-context/): `traceparent` and `tracestate`.

Each gateway continues the trace a request brings, or starts one when it brings none or an
invalid one, and sends the next hop a child `traceparent`: the same trace id, a new parent (span)
id. `tracestate` is passed through when it is valid and the `traceparent` was, and dropped
otherwise, as the spec asks. Ids come from the caller's `random.Random` (the gateway passes a
`random.Random` seeded by the OS; tests pass a seeded one).

Rules applied (spec section 3.2): `version-traceid-parentid-flags`, lower-case hex only;
version `ff` is invalid; version `00` is exactly 55 characters; a higher version is parsed by its
first four fields when at least 55 characters long and followed by `-` or the end; trace id is 32
hex digits not all zero, parent id 16 hex digits not all zero, flags 2 hex digits.
`tracestate` (section 3.3): at most 32 list members, `key=value`, keys unique; keys are
`lcalpha 0*255(lcalpha / DIGIT / "_" / "-" / "*" / "/")` or the multi-tenant
`tenant@system` form; values are 0-255 printable ASCII characters except `,` and `=`, not
ending in a space. Over 512 characters, members longer than 128 are dropped first, then members
from the end, as section 3.3.1.5 suggests.

Pure: must not import trio, socket, time or `federation`.
"""

from __future__ import annotations

import random
import re

import attrs

_HEX = re.compile(r"^[0-9a-f]+$")
_KEY = re.compile(r"^(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})$")
_VALUE = re.compile(r"^[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]$")
MAX_TRACESTATE_MEMBERS = 32
MAX_TRACESTATE_CHARS = 512
LONG_MEMBER_CHARS = 128
SAMPLED = 0x01


@attrs.frozen(slots=True)
class TraceContext:
    """One hop's trace context: ids as lower-case hex, `flags` as an int, `tracestate` as its header value."""

    trace_id: str
    parent_id: str
    flags: int = 0
    tracestate: str = ""

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    @property
    def traceparent(self) -> str:
        return format_traceparent(self)


def format_traceparent(context: TraceContext) -> str:
    """`00-<trace id>-<parent id>-<flags>`: this gateway always sends version 00."""
    return f"00-{context.trace_id}-{context.parent_id}-{context.flags:02x}"


def _hex_id(text: str, size: int) -> bool:
    return len(text) == size and _HEX.fullmatch(text) is not None and text.strip("0") != ""


def parse_traceparent(value: str | bytes | None) -> TraceContext | None:
    """The trace context in a `traceparent` header value, or None when it is missing or invalid."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if len(value) < 55:
        return None
    version = value[:2]
    if _HEX.fullmatch(version) is None or version == "ff" or value[2] != "-":
        return None
    if version == "00" and len(value) != 55:
        return None
    if len(value) > 55 and value[55] != "-":
        return None
    trace_id, parent_id, flags = value[3:35], value[36:52], value[53:55]
    if value[35] != "-" or value[52] != "-":
        return None
    if not _hex_id(trace_id, 32) or not _hex_id(parent_id, 16):
        return None
    if len(flags) != 2 or _HEX.fullmatch(flags) is None:
        return None
    return TraceContext(trace_id, parent_id, int(flags, 16))


def parse_tracestate(value: str | bytes | None) -> str | None:
    """The normalised `tracestate` (members joined by `,`) or None when it is invalid; `""` when absent.

    Several `tracestate` header lines are combined by the caller with `,` before parsing.
    """
    if value is None:
        return ""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    members: list[str] = []
    keys: set[str] = set()
    for raw in value.split(","):
        member = raw.strip(" \t")
        if not member:
            continue
        key, sep, val = member.partition("=")
        if not sep or _KEY.fullmatch(key) is None or _VALUE.fullmatch(val) is None or key in keys:
            return None
        keys.add(key)
        members.append(member)
    if len(members) > MAX_TRACESTATE_MEMBERS:
        return None
    return _truncate(members)


def _truncate(members: list[str]) -> str:
    text = ",".join(members)
    if len(text) <= MAX_TRACESTATE_CHARS:
        return text
    members = [m for m in members if len(m) <= LONG_MEMBER_CHARS]
    while members and len(",".join(members)) > MAX_TRACESTATE_CHARS:
        members.pop()
    return ",".join(members)


def _random_hex(rng: random.Random, bits: int) -> str:
    while True:
        value = rng.getrandbits(bits)
        if value:
            return f"{value:0{bits // 4}x}"


def new_trace(rng: random.Random, *, sampled: bool = False) -> TraceContext:
    """A fresh trace: random non-zero trace id and parent id."""
    return TraceContext(_random_hex(rng, 128), _random_hex(rng, 64), SAMPLED if sampled else 0)


def child_of(context: TraceContext, rng: random.Random) -> TraceContext:
    """The context to send to the next hop: same trace id, flags and tracestate, a new parent id."""
    return TraceContext(context.trace_id, _random_hex(rng, 64), context.flags, context.tracestate)


def continue_or_start(
    traceparent: str | bytes | None,
    tracestate: str | bytes | None,
    rng: random.Random,
    *,
    sampled: bool = False,
) -> tuple[TraceContext, bool]:
    """The incoming context (tracestate kept only when valid) and False, or a new trace and True.

    The returned context is this hop's view of the caller's span; use `child_of()` for the
    `traceparent` sent upstream.
    """
    context = parse_traceparent(traceparent)
    if context is None:
        return new_trace(rng, sampled=sampled), True
    state = parse_tracestate(tracestate)
    if state:
        context = TraceContext(context.trace_id, context.parent_id, context.flags, state)
    return context, False
