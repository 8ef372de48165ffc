"""The etcd registry backend: etcd's v3 API through its JSON gateway, with httpx under trio.

Owns `EtcdBackend(endpoints)`: transactions (`/v3/kv/txn` with MOD compares), paged prefix
reads (`/v3/kv/range`), streaming watches (`/v3/watch`, newline-delimited JSON), leases
(`/v3/lease/grant|keepalive|revoke`), compaction and status, with fail-over between the
members of a cluster. Keys are stored exactly as given (the store puts them under
`/isthmus/<cluster>/...`).

Why the JSON gateway and not the `etcd3` PyPI package: `etcd3` (last release 2020) fails to
import with protobuf >= 4, its calls block (synchronous gRPC stubs) and its watches run on
threads, none of which trio can cancel. The gateway speaks HTTP/1.1 + JSON that httpx drives
natively under trio, streaming watches included. Keys and values travel base64-encoded,
64-bit numbers as strings; PUT events in a watch carry no "type" field, DELETE events do.

Prefix reads take a faster road when they can: etcd's gRPC `KV/Range` itself, through grpcio
(already a dependency) with the protobuf messages encoded and decoded by hand below, so no
generated code and no `protobuf` package are needed. The gateway marshals every key to JSON
by reflection: about 12 µs of etcd CPU per key, 1.3 s for a 100,000-endpoint catalog, against
about 1.5 µs per key over gRPC, and the protobuf answer decodes faster in Python than JSON
plus base64. The call is grpcio's future, completed on grpcio's own thread and handed back
to trio (cancellable; no thread of ours blocks). Only `KV/Range` goes this way: a read is
idempotent, so any gRPC failure other than a definite answer from etcd (compacted or future
revision, invalid argument) simply repeats the read through the gateway, where the
fail-over below applies. `grpc_reads=False` keeps every call on the gateway.

Fail-over: every request goes to the current member. A member that refuses the connection,
drops it, answers "unavailable" (no leader yet) or does not answer within
`attempt_timeout_s` (a follower that forwarded a write to a leader that has just died
answers only after etcd's own request timeout, about 7 s) makes the request move on to the
next member, with a short capped backoff and a doubled attempt timeout (a slow member is
not a dead one), for up to `request_timeout_s`. When every member refuses the connection
the request fails at once with `RegistryUnavailable`. A transaction with compares is sent
again only when etcd says it never proposed it ("no leader"): if its member dies or times
out, it raises `RegistryUnavailable` saying the outcome is unknown, since repeating it
could turn its own success into a `Conflict`. Other requests are idempotent in effect
and are repeated.

Watches: a watch whose member dies resumes on the next member from the last revision it
delivered: no gap, no duplicate. A watch from a compacted revision yields one snapshot
batch and carries on; the snapshot is read at the compaction revision (the oldest etcd
still keeps, or the current one if that is compacted too by then), so every change after
it still arrives as an event. A watch gives up with `RegistryUnavailable` after failing on
every member for `request_timeout_s`.

It imports neither `gateway` nor `federation`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import httpx
import trio

from registry.backend import (
    Backend,
    BackendStatus,
    Compare,
    Delete,
    KeyValue,
    Put,
    WatchBatch,
    WatchEvent,
)
from registry.errors import (
    Compacted,
    Conflict,
    LeaseExpired,
    RegistryError,
    RegistryUnavailable,
    ValidationError,
)

HINT = "is etcd running there? check the --registry URL or the cluster config's registry_url"

# gRPC status codes etcd's gateway reports in {"code": N}.
GRPC_INVALID_ARGUMENT = 3
GRPC_DEADLINE_EXCEEDED = 4
GRPC_NOT_FOUND = 5
GRPC_OUT_OF_RANGE = 11
GRPC_UNAVAILABLE = 14
RETRYABLE_CODES = frozenset({GRPC_DEADLINE_EXCEEDED, GRPC_UNAVAILABLE})
# Answers that say the request was refused before it was proposed: safe to send again.
NOT_APPLIED = ("etcdserver: no leader", "proposal dropped", "not capable")
UNKNOWN_OUTCOME = "the transaction may or may not have been applied"

# keys per /v3/kv/range page: bounded responses (~1.6 MB of JSON) for 100k-endpoint catalogs
RANGE_PAGE = 5000
# keys per gRPC KV/Range page: ~190 bytes of protobuf per endpoint key, so ~4 MB; one page holds
# a 1,000-service × 10-endpoint cluster (11,000 keys) whole.
GRPC_RANGE_PAGE = 20_000
GRPC_MAX_MESSAGE = 64 * 2**20  # a page of GRPC_RANGE_PAGE keys with values up to ~3 KB
GRPC_RANGE_METHOD = "/etcdserverpb.KV/Range"


# ---------------------------------------------------------------------------
# Pure encoding and decoding of the gateway's JSON (no I/O; tested alone).
# ---------------------------------------------------------------------------


def b64(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode("ascii")


def unb64(text: str | None) -> bytes:
    return binascii.a2b_base64(text) if text else b""


def prefix_range_end(prefix: bytes) -> bytes:
    """etcd's range end for "every key starting with `prefix`" (clientv3.GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # empty prefix or all 0xff: up to the end of the keyspace


def key_range(prefix: str) -> dict[str, str]:
    """`key`/`range_end` of a prefix; the empty prefix is the whole keyspace."""
    raw = prefix.encode()
    if not raw:
        return {"key": b64(b"\0"), "range_end": b64(b"\0")}
    return {"key": b64(raw), "range_end": b64(prefix_range_end(raw))}


def encode_txn(ops: Sequence[Put | Delete], compare: Sequence[Compare] = ()) -> dict[str, Any]:
    """The body of POST /v3/kv/txn: all `ops` on success, nothing on failure."""
    success: list[dict[str, Any]] = []
    for op in ops:
        if isinstance(op, Put):
            put: dict[str, str] = {"key": b64(op.key), "value": b64(op.value)}
            if op.lease:
                put["lease"] = str(op.lease)
            success.append({"request_put": put})
        elif isinstance(op, Delete):
            if op.prefix:
                success.append({"request_delete_range": key_range(op.key)})
            else:
                success.append({"request_delete_range": {"key": b64(op.key)}})
        else:
            raise ValidationError(f"txn op must be Put or Delete, not {type(op).__name__}")
    compares = [
        {"key": b64(c.key), "target": "MOD", "result": "EQUAL", "mod_revision": str(c.mod_revision)}
        for c in compare
    ]
    return {"compare": compares, "success": success, "failure": []}


def header_revision(body: dict[str, Any]) -> int:
    return int(body.get("header", {}).get("revision", 0))


def decode_kv(kv: dict[str, Any], _a2b: Any = binascii.a2b_base64) -> KeyValue:
    """One gateway `kvs` entry; on the hot path of prefix reads, hence the local `a2b_base64`."""
    value = kv.get("value")
    lease = kv.get("lease")
    return KeyValue(
        _a2b(kv["key"]).decode() if "key" in kv else "",
        _a2b(value) if value else b"",
        int(kv.get("mod_revision", 0)),
        int(lease) if lease else 0,
    )


def decode_events(result: dict[str, Any]) -> list[WatchEvent]:
    """Events of one watch response; a PUT has no "type" field, a DELETE has "type": "DELETE"."""
    events = []
    for event in result.get("events", ()):
        kv = event.get("kv", {})
        kind = "delete" if event.get("type") == "DELETE" else "put"
        events.append(
            WatchEvent(
                kind=kind,
                key=unb64(kv.get("key")).decode(),
                value=b"" if kind == "delete" else unb64(kv.get("value")),
                revision=int(kv.get("mod_revision", 0)),
            )
        )
    return events


def batches_after(events: Sequence[WatchEvent], last_revision: int) -> list[WatchBatch]:
    """One batch per revision, in order, leaving out revisions already delivered."""
    batches: list[WatchBatch] = []
    pending: list[WatchEvent] = []
    for event in events:
        if event.revision <= last_revision:
            continue
        if pending and pending[-1].revision != event.revision:
            batches.append(WatchBatch(revision=pending[-1].revision, events=tuple(pending)))
            pending = []
        pending.append(event)
    if pending:
        batches.append(WatchBatch(revision=pending[-1].revision, events=tuple(pending)))
    return batches


def normalize_endpoint(endpoint: str) -> str:
    """`host:port` or `http://host:port` → `http://host:port` (no trailing slash)."""
    text = endpoint.strip().rstrip("/")
    if not text:
        raise ValidationError("etcd endpoint: empty")
    if "://" not in text:
        text = f"http://{text}"
    if not text.startswith(("http://", "https://")):
        raise ValidationError(f"etcd endpoint: {endpoint!r} is not host:port or http://host:port")
    hostport = text.split("://", 1)[1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValidationError(f"etcd endpoint: {endpoint!r} is not host:port")
    return text


def error_of(body: Any) -> tuple[int, str]:
    """(gRPC code, message) of a gateway error body."""
    if isinstance(body, dict):
        return int(body.get("code", 0) or 0), str(body.get("message") or body.get("error") or body)
    return 0, str(body)[:200]


# ---------------------------------------------------------------------------
# Pure protobuf encoding of KV/Range (etcd's api/etcdserverpb/rpc.proto, mvccpb/kv.proto).
# ---------------------------------------------------------------------------

# Field numbers used here. RangeRequest: key 1, range_end 2, limit 3, revision 4.
# RangeResponse: header 1 (ResponseHeader: revision 3), kvs 2, more 3, count 4.
# KeyValue: key 1, create_revision 2, mod_revision 3, version 4, value 5, lease 6.
_TAG_KVS = 0x12  # field 2, length-delimited
_TAG_HEADER = 0x0A  # field 1, length-delimited
_TAG_MORE = 0x18  # field 3, varint
_TAG_COUNT = 0x20  # field 4, varint
_KV_KEY, _KV_MOD_REVISION, _KV_VALUE, _KV_LEASE = 0x0A, 0x18, 0x2A, 0x30
_HEADER_REVISION = 0x18


class ProtobufError(ValueError):
    """A message that is not the protobuf it should be (truncated, or an unknown wire type)."""


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 on the wire: two's complement in ten bytes
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    result, shift = b & 0x7F, 7
    pos += 1
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtobufError("varint longer than 10 bytes")


def _skip(buf: bytes, pos: int, tag: int) -> int:
    """The position after the value of a field with `tag` (a field this decoder does not use)."""
    wire = tag & 7
    if wire == 0:
        return _read_varint(buf, pos)[1]
    if wire == 2:
        n, pos = _read_varint(buf, pos)
        return pos + n
    if wire == 1:
        return pos + 8
    if wire == 5:
        return pos + 4
    raise ProtobufError(f"unsupported wire type {wire}")


def _read_tag(buf: bytes, pos: int) -> tuple[int, int]:
    tag = buf[pos]
    if tag < 0x80:
        return tag, pos + 1
    return _read_varint(buf, pos)


def encode_range_request(key: bytes, range_end: bytes, *, limit: int = 0, revision: int = 0) -> bytes:
    """A RangeRequest for the keys in [key, range_end), at most `limit`, at `revision` (0: now)."""
    out = b"\x0a" + _varint(len(key)) + key + b"\x12" + _varint(len(range_end)) + range_end
    if limit:
        out += b"\x18" + _varint(limit)
    if revision:
        out += b"\x20" + _varint(revision)
    return out


def _decode_kv_proto(buf: bytes, pos: int, end: int) -> KeyValue:
    """The KeyValue in buf[pos:end].

    Fast path for the order etcd writes (key, create_revision, mod_revision, version, value,
    lease if any), with one-byte lengths inlined and the unused fields stepped over; anything
    else goes through the general field loop. A catalog read decodes 100,000 of these.
    """
    start = pos
    if buf[pos] == _KV_KEY:
        n = buf[pos + 1]
        if n < 0x80:
            pos += 2
        else:
            n, pos = _read_varint(buf, pos + 1)
        key = buf[pos : pos + n]
        pos += n
        if pos < end and buf[pos] == 0x10:  # create_revision: step over
            pos += 1
            while buf[pos] & 0x80:
                pos += 1
            pos += 1
        mod_revision = 0
        if pos < end and buf[pos] == _KV_MOD_REVISION:
            mod_revision, pos = _read_varint(buf, pos + 1)
        if pos < end and buf[pos] == 0x20:  # version: step over
            pos += 1
            while buf[pos] & 0x80:
                pos += 1
            pos += 1
        value = b""
        if pos < end and buf[pos] == _KV_VALUE:
            n = buf[pos + 1]
            if n < 0x80:
                pos += 2
            else:
                n, pos = _read_varint(buf, pos + 1)
            value = buf[pos : pos + n]
            pos += n
        lease = 0
        if pos < end and buf[pos] == _KV_LEASE:
            lease, pos = _read_varint(buf, pos + 1)
        if pos == end:
            return KeyValue(key.decode(), value, mod_revision, lease)
    return _decode_kv_fields(buf, start, end)


def _decode_kv_fields(buf: bytes, pos: int, end: int) -> KeyValue:
    """The KeyValue in buf[pos:end], fields in any order, unknown ones skipped."""
    key = value = b""
    mod_revision = lease = 0
    while pos < end:
        tag, pos = _read_tag(buf, pos)
        if tag == _KV_KEY or tag == _KV_VALUE:
            n, pos = _read_varint(buf, pos)
            if tag == _KV_KEY:
                key = buf[pos : pos + n]
            else:
                value = buf[pos : pos + n]
            pos += n
        elif tag == _KV_MOD_REVISION:
            mod_revision, pos = _read_varint(buf, pos)
        elif tag == _KV_LEASE:
            lease, pos = _read_varint(buf, pos)
        else:
            pos = _skip(buf, pos, tag)
    if pos != end:
        raise ProtobufError("KeyValue overruns its length")
    return KeyValue(key.decode(), value, mod_revision, lease)


def decode_range_response(buf: bytes) -> tuple[int, list[KeyValue], bool, int]:
    """(header revision, kvs, more, count) of a RangeResponse."""
    revision = count = 0
    more = False
    kvs: list[KeyValue] = []
    append, decode_kv = kvs.append, _decode_kv_proto
    pos, end = 0, len(buf)
    try:
        while pos < end:
            tag, pos = _read_tag(buf, pos)
            if tag == _TAG_KVS:
                n = buf[pos]
                if n < 0x80:
                    pos += 1
                else:
                    n, pos = _read_varint(buf, pos)
                append(decode_kv(buf, pos, pos + n))
                pos += n
            elif tag == _TAG_HEADER:
                n, pos = _read_varint(buf, pos)
                stop = pos + n
                while pos < stop:
                    field, pos = _read_tag(buf, pos)
                    if field == _HEADER_REVISION:
                        revision, pos = _read_varint(buf, pos)
                    else:
                        pos = _skip(buf, pos, field)
            elif tag == _TAG_MORE:
                flag, pos = _read_varint(buf, pos)
                more = bool(flag)
            elif tag == _TAG_COUNT:
                count, pos = _read_varint(buf, pos)
            else:
                pos = _skip(buf, pos, tag)
    except IndexError:
        raise ProtobufError("RangeResponse is truncated") from None
    if pos != end:
        raise ProtobufError("RangeResponse is truncated")
    return revision, kvs, more, count


# ---------------------------------------------------------------------------
# The backend (trio I/O).
# ---------------------------------------------------------------------------


class _LeaseNotFound(RegistryError):
    """Internal: etcd answered "requested lease not found"."""


class _Ambiguous(Exception):
    """Internal: the member died after it may have applied the request."""


class EtcdBackend(Backend):
    """A registry on an etcd cluster reached through `endpoints` (`host:port` or URLs)."""

    kind = "etcd"

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        request_timeout_s: float = 15.0,
        attempt_timeout_s: float = 2.0,
        connect_timeout_s: float = 1.0,
        grpc_reads: bool = True,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = endpoints.split(",")
        self._endpoints = [normalize_endpoint(e) for e in endpoints]
        if not self._endpoints:
            raise ValidationError("etcd endpoints: none given")
        self.address = ",".join(e.split("://", 1)[1] for e in self._endpoints)
        self._request_timeout_s = request_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._current = 0
        self._attempt_timeout_s = attempt_timeout_s
        # trust_env=False: never route registry traffic through a proxy from the environment.
        self._client = httpx.AsyncClient(
            trust_env=False,
            timeout=httpx.Timeout(attempt_timeout_s, connect=connect_timeout_s),
        )
        self.grpc_reads = grpc_reads  # False: prefix reads through the gateway too
        self._channels: dict[int, tuple[grpc.Channel, Any]] = {}
        self.range_reads = {"grpc": 0, "gateway": 0}  # pages read each way (shown by repr)

    def __repr__(self) -> str:
        reads = ", ".join(f"{k}={v}" for k, v in self.range_reads.items())
        return f"<EtcdBackend {self.address} current={self._endpoints[self._current]} range pages: {reads}>"

    @property
    def endpoints(self) -> list[str]:
        return list(self._endpoints)

    def _rotate(self, failed: int) -> None:
        if self._current == failed:
            self._current = (failed + 1) % len(self._endpoints)

    async def _call(self, path: str, body: dict[str, Any], *, repeatable: bool = True) -> dict[str, Any]:
        """POST `body` to `path` on the current member, failing over as the module docstring says."""
        deadline = trio.current_time() + self._request_timeout_s
        refused: set[int] = set()
        delay = 0.02
        attempt_s = self._attempt_timeout_s if repeatable else self._request_timeout_s
        reason = "no member tried"
        while True:
            index = self._current
            url = self._endpoints[index] + path
            read_s = max(0.1, min(attempt_s, deadline - trio.current_time()))
            try:
                response = await self._client.post(
                    url, json=body, timeout=httpx.Timeout(read_s, connect=self._connect_timeout_s)
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Never sent: always safe to try the next member.
                reason = f"cannot connect to {url}: {exc or type(exc).__name__}"
                refused.add(index)
                self._rotate(index)
                if len(refused) == len(self._endpoints):
                    raise RegistryUnavailable(self.address, reason, HINT) from exc
                continue
            except httpx.TransportError as exc:
                reason = f"{url}: {type(exc).__name__} {exc}".strip()  # e.g. ReadTimeout, RemoteProtocolError
                if not repeatable:
                    raise RegistryUnavailable(self.address, f"{reason}; {UNKNOWN_OUTCOME}", HINT) from exc
                self._rotate(index)
                if isinstance(exc, httpx.TimeoutException):
                    attempt_s *= 2  # a slow member is not a dead one: give the next try longer
            else:
                try:
                    payload = response.json()
                except ValueError:
                    payload = response.text
                if response.status_code == 200 and isinstance(payload, dict):
                    return payload
                code, message = error_of(payload)
                retryable = (
                    code in RETRYABLE_CODES or response.status_code == 503 or "proposal dropped" in message
                )
                if not retryable:
                    raise self._error(code, message, url)
                reason = f"{url}: {message}"
                if not repeatable and not any(m in message for m in NOT_APPLIED):
                    raise RegistryUnavailable(self.address, f"{reason}; {UNKNOWN_OUTCOME}", HINT)
                self._rotate(index)
            refused.discard(index)
            if trio.current_time() + delay >= deadline:
                raise RegistryUnavailable(self.address, f"{reason} (for {self._request_timeout_s:g}s)", HINT)
            await trio.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _error(self, code: int, message: str, url: str) -> RegistryError:
        if code == GRPC_OUT_OF_RANGE and "compacted" in message:
            return RegistryError(f"etcd at {url}: {message}")
        if code == GRPC_INVALID_ARGUMENT:
            return ValidationError(f"etcd at {url} refused the request: {message}")
        if code == GRPC_NOT_FOUND and "lease" in message:
            return _LeaseNotFound(message)
        return RegistryError(f"etcd at {url}: {message} (code {code})")

    # -- the Backend interface ------------------------------------------------

    async def txn(self, ops: Sequence[Put | Delete], compare: Sequence[Compare] = ()) -> int:
        try:
            body = await self._call("/v3/kv/txn", encode_txn(ops, compare), repeatable=not compare)
        except _LeaseNotFound:
            leases = [op.lease for op in ops if isinstance(op, Put) and op.lease]
            raise LeaseExpired(leases[0] if leases else 0) from None
        if not body.get("succeeded", False):
            keys = ", ".join(f"{c.key}@{c.mod_revision}" for c in compare)
            raise Conflict(f"etcd at {self.address}: compare failed ({keys}); nothing written")
        return header_revision(body)

    async def get_prefix(self, prefix: str) -> tuple[int, list[KeyValue]]:
        while True:
            try:
                return await self._get_prefix_paged(prefix)
            except Compacted:
                continue  # compacted between two pages: read again at a newer revision

    async def _get_prefix_paged(self, prefix: str, at_revision: int = 0) -> tuple[int, list[KeyValue]]:
        """Every key under `prefix` at `at_revision` (0: now), read in pages pinned to one revision."""
        raw = prefix.encode()
        key, range_end = (raw, prefix_range_end(raw)) if raw else (b"\0", b"\0")
        revision, kvs, more = await self._range(key, range_end, at_revision)
        revision = at_revision or revision
        while more and kvs:
            _, page, more = await self._range(kvs[-1].key.encode() + b"\0", range_end, revision)
            kvs.extend(page)
        return revision, kvs

    async def _range(self, key: bytes, range_end: bytes, revision: int) -> tuple[int, list[KeyValue], bool]:
        """One page of [key, range_end) at `revision` (0: now): (header revision, kvs, more).

        Over gRPC when the current member takes it, else through the gateway (with fail-over).
        A revision etcd has compacted raises `Compacted`.
        """
        try:
            if self.grpc_reads:
                answer = await self._grpc_range(key, range_end, revision)
                if answer is not None:
                    self.range_reads["grpc"] += 1
                    return answer
            body: dict[str, Any] = {"key": b64(key), "range_end": b64(range_end), "limit": str(RANGE_PAGE)}
            if revision:
                body["revision"] = str(revision)
            payload = await self._call("/v3/kv/range", body)
        except RegistryError as exc:
            if revision and "compacted" in str(exc):
                raise Compacted(revision, 0) from exc
            raise
        self.range_reads["gateway"] += 1
        return (
            header_revision(payload),
            [decode_kv(kv) for kv in payload.get("kvs", ())],
            bool(payload.get("more")),
        )

    def _range_stub(self, index: int) -> Any | None:
        """The KV/Range callable of member `index` (its channel opened once), or None for https members."""
        if index not in self._channels:
            url = self._endpoints[index]
            if not url.startswith("http://"):
                return None  # TLS to etcd is configured for the gateway only
            options = [
                ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE),
                ("grpc.enable_http_proxy", 0),  # as trust_env=False: never through a proxy
            ]
            channel = grpc.insecure_channel(url.removeprefix("http://"), options=options)
            self._channels[index] = (channel, channel.unary_unary(GRPC_RANGE_METHOD))
        return self._channels[index][1]

    async def _grpc_range(
        self, key: bytes, range_end: bytes, revision: int
    ) -> tuple[int, list[KeyValue], bool] | None:
        """One KV/Range page over gRPC from the current member; None when the gateway should be asked instead."""
        index = self._current
        stub = self._range_stub(index)
        if stub is None:
            return None
        request = encode_range_request(key, range_end, limit=GRPC_RANGE_PAGE, revision=revision)
        future = stub.future(request, timeout=self._attempt_timeout_s)
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: Any) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass  # the caller is gone: nobody waits for this answer

        future.add_done_callback(wake)
        try:
            await done.wait()
        finally:
            if not future.done():
                future.cancel()
        try:
            answer = future.result()
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if code in (grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.INVALID_ARGUMENT):
                # A definite answer (a compacted or future revision, a bad key): the gateway would say the same.
                raise self._error(code.value[0], details, self._endpoints[index]) from None
            return None  # unavailable, timed out, not served: the gateway path retries and fails over
        try:
            header, kvs, more, _count = decode_range_response(answer)
        except ProtobufError:
            return None
        return header, kvs, more

    async def _snapshot(self, prefix: str, compact_revision: int) -> tuple[int, list[KeyValue]]:
        """The keys at the compaction revision (the oldest etcd still has), so that every change
        after it still arrives as an event; at the current revision if that was compacted too."""
        try:
            return await self._get_prefix_paged(prefix, at_revision=compact_revision)
        except Compacted:
            return await self.get_prefix(prefix)

    async def watch(self, prefix: str, from_revision: int) -> AsyncIterator[WatchBatch]:
        """Batches after `from_revision`, one per revision; see the module docstring for fail-over."""
        last = from_revision
        span = key_range(prefix)
        failing_since: float | None = None
        delay = 0.02
        reason = ""
        while True:
            index = self._current
            url = self._endpoints[index] + "/v3/watch"
            request = {"create_request": {**span, "start_revision": str(last + 1)}}
            try:
                async with self._client.stream(
                    "POST",
                    url,
                    json=request,
                    timeout=httpx.Timeout(None, connect=self._connect_timeout_s),
                ) as response:
                    if response.status_code != 200:
                        await response.aread()
                        raise _Ambiguous(f"{url}: HTTP {response.status_code} {response.text[:200]}")
                    async for line in response.aiter_lines():
                        if not line.strip():
                            continue
                        message = json.loads(line)
                        if "error" in message:
                            code, text = error_of(message["error"])
                            raise _Ambiguous(f"{url}: {text} (code {code})")
                        result = message.get("result", {})
                        compact_revision = int(result.get("compact_revision", 0))
                        if compact_revision:
                            revision, kvs = await self._snapshot(prefix, compact_revision)
                            yield WatchBatch(revision=revision, snapshot=tuple(kvs))
                            last = revision
                            break  # this watch is cancelled; open a new one after the snapshot
                        if result.get("canceled"):
                            raise _Ambiguous(f"{url}: watch cancelled: {result.get('cancel_reason', '')}")
                        if result.get("created"):
                            failing_since = None
                            delay = 0.02
                        for batch in batches_after(decode_events(result), last):
                            yield batch
                            last = batch.revision
                    else:
                        raise _Ambiguous(f"{url}: the member closed the watch stream")
                continue
            except (httpx.TransportError, httpx.TimeoutException, _Ambiguous, ValueError) as exc:
                reason = f"{type(exc).__name__} {exc}".strip()
            self._rotate(index)
            now = trio.current_time()
            if failing_since is None:
                failing_since = now
            elif now - failing_since > self._request_timeout_s:
                raise RegistryUnavailable(self.address, f"watch failed on every member: {reason}", HINT)
            await trio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def grant_lease(self, ttl_s: float) -> int:
        """A lease of at least `ttl_s` (whole seconds; etcd raises very short TTLs to its minimum)."""
        if ttl_s <= 0:
            raise ValidationError(f"lease ttl_s: must be > 0, not {ttl_s}")
        body = await self._call("/v3/lease/grant", {"TTL": str(max(1, math.ceil(ttl_s)))})
        if body.get("error"):
            raise RegistryError(f"etcd at {self.address}: lease grant failed: {body['error']}")
        return int(body["ID"])

    async def keepalive(self, lease: int) -> None:
        # /v3/lease/keepalive is a stream; one request message gives one answer line, then EOF.
        body = await self._call("/v3/lease/keepalive", {"ID": str(lease)})
        result = body.get("result", body)
        if int(result.get("TTL", 0)) <= 0:
            raise LeaseExpired(lease)

    async def revoke(self, lease: int) -> None:
        try:
            await self._call("/v3/lease/revoke", {"ID": str(lease)})
        except _LeaseNotFound:
            pass  # already gone, and its keys with it

    async def compact(self, revision: int) -> None:
        """Compact history up to `revision` (logically at once; etcd frees the space later)."""
        try:
            await self._call("/v3/kv/compaction", {"revision": str(revision), "physical": False})
        except RegistryError as exc:
            if "compacted" not in str(exc):
                raise  # "required revision has been compacted": done already, by us or another client

    async def status(self) -> BackendStatus:
        try:
            body = await self._call("/v3/maintenance/status", {})
        except RegistryError as exc:
            reason = exc.reason if isinstance(exc, RegistryUnavailable) else str(exc)
            return BackendStatus(
                backend=self.kind, address=self.address, revision=0, reachable=False, detail=reason
            )
        leader = int(body.get("leader", 0))
        member = int(body.get("header", {}).get("member_id", 0))
        detail = f"etcd {body.get('version', '?')}, leader {leader:x}" + (
            " (this member)" if leader == member else ""
        )
        return BackendStatus(
            backend=self.kind,
            address=self.address,
            revision=header_revision(body),
            reachable=True,
            detail=f"{detail}, answered by {self._endpoints[self._current]}",
        )

    async def aclose(self) -> None:
        for channel, _ in self._channels.values():
            channel.close()
        self._channels.clear()
        await self._client.aclose()
