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
import json
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any

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

RANGE_PAGE = 5000  # keys per /v3/kv/range page: bounded responses (~1 MB) for 100k-endpoint catalogs


# ---------------------------------------------------------------------------
# Pure encoding and decoding of the gateway's JSON (no I/O; tested alone).
# ---------------------------------------------------------------------------


def b64(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode("ascii")


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


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


def decode_kv(kv: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=unb64(kv.get("key")).decode(),
        value=unb64(kv.get("value")),
        mod_revision=int(kv.get("mod_revision", 0)),
        lease=int(kv.get("lease", 0)),
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

    def __repr__(self) -> str:
        return f"<EtcdBackend {self.address} current={self._endpoints[self._current]}>"

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
        span = key_range(prefix)
        body: dict[str, Any] = {**span, "limit": str(RANGE_PAGE)}
        if at_revision:
            body["revision"] = str(at_revision)
        try:
            answer = await self._call("/v3/kv/range", body)
        except RegistryError as exc:
            if at_revision and "compacted" in str(exc):
                raise Compacted(at_revision, 0) from exc
            raise
        revision = at_revision or header_revision(answer)
        kvs = [decode_kv(kv) for kv in answer.get("kvs", ())]
        while answer.get("more") and kvs:
            after = kvs[-1].key.encode() + b"\0"
            page = {"key": b64(after), "range_end": span["range_end"], "limit": str(RANGE_PAGE)}
            page["revision"] = str(revision)
            try:
                answer = await self._call("/v3/kv/range", page)
            except RegistryError as exc:
                if "compacted" in str(exc):
                    raise Compacted(revision, 0) from exc
                raise
            kvs.extend(decode_kv(kv) for kv in answer.get("kvs", ()))
        return revision, kvs

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
        await self._client.aclose()
