"""The Consul registry backend: Consul's HTTP KV API, sessions and blocking queries, with httpx under trio.

Owns `ConsulBackend(address)` (one agent, `host:port`), adapting Consul to the
`registry.backend.Backend` contract:

- **Keys.** Registry keys start with "/" (`/isthmus/<cluster>/...`); Consul keys must not
  (the path `/v1/kv//x` is not addressable), so one leading "/" is dropped on the way in
  and added back on the way out. A key without a leading "/" is a `ValidationError`.
- **Revisions** are Consul's raft indexes: a key's `ModifyIndex`, and the `X-Consul-Index`
  of a read. They only grow, but not by one per transaction (sessions and other writes
  use indexes too). A transaction returns the `ModifyIndex` of its writes; one that only
  deletes returns the KV store's index read right after it.
- **Transactions** go to `PUT /v1/txn` (at most 128 operations): each `Compare` becomes a
  `check-index` (or `check-not-exists` for revision 0) ahead of the writes; `Put` is
  `set` (or `lock` with the session of its lease), `Delete` is `delete` or `delete-tree`.
  A rolled-back transaction (409) whose failed operation is a compare raises `Conflict`.
- **Prefix reads** are `GET /v1/kv/<prefix>?recurse`.
- **Leases** are sessions: `PUT /v1/session/create` with `TTL` and `Behavior=delete` (keys
  held by the session are deleted when it ends), `LockDelay=0s` (so an endpoint can
  register again at once), renewed by `/v1/session/renew/<id>` and ended by
  `/v1/session/destroy/<id>`. The integer lease id of the interface is the session UUID
  as a 128-bit integer (`uuid.UUID(id).int`), so it means the same in every process.
  Consul allows TTLs of 10 s to 24 h and may end a session up to twice its TTL late:
  shorter TTLs are raised to 10 s.
- **Watches** are blocking queries, `GET /v1/kv/<prefix>?recurse&index=N&wait=...`; each
  answer is the whole subtree, diffed against the previous one into put and delete
  events grouped by revision (a put carries its `ModifyIndex`; a delete the tombstone
  index of its key, or the answer's `X-Consul-Index` when many keys went at once).
- **Resume.** Consul keeps no history to replay, so there is no compaction either: a
  watch from revision R continues exactly only when the state at R is known, i.e. R is 0
  (the empty store), or R is the revision of a recent `get_prefix` of this backend
  covering the prefix (how the store loads a catalog and then watches it). Otherwise,
  and whenever Consul's index goes backwards (a restored snapshot), the watch yields one
  snapshot batch, as after an etcd compaction, and then carries on with changes.
- **Status** comes from `GET /v1/status/leader` and the KV index.

A refused connection raises `RegistryUnavailable` at once; "no cluster leader" answers and
timeouts are retried with a capped backoff until `request_timeout_s`. It imports neither
`gateway` nor `federation`. py-consul is not used: it is synchronous (requests), and httpx
runs natively under trio.
"""

from __future__ import annotations

import base64
import math
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote

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
    Conflict,
    LeaseExpired,
    RegistryError,
    RegistryUnavailable,
    ValidationError,
)

HINT = "is a consul agent running there? check the --registry URL or the cluster config's registry_url"
MAX_TXN_OPS = 128  # documented limit of /v1/txn
MIN_SESSION_TTL_S = 10
MAX_SESSION_TTL_S = 86400
EXACT_DELETE_LOOKUPS = 16  # deletes in one answer whose own tombstone index is looked up
BASELINES_KEPT = 4  # recent get_prefix results a watch may resume from


# ---------------------------------------------------------------------------
# Pure translation between the Backend contract and Consul's JSON (no I/O).
# ---------------------------------------------------------------------------


def to_consul_key(key: str) -> str:
    """`/isthmus/a` → `isthmus/a`; keys must start with "/"."""
    if not key.startswith("/"):
        raise ValidationError(f"registry key {key!r}: must start with '/'")
    return key[1:]


def from_consul_key(key: str) -> str:
    return "/" + key


def lease_to_session(lease: int) -> str:
    return str(uuid.UUID(int=lease))


def session_to_lease(session: str | None) -> int:
    return uuid.UUID(session).int if session else 0


def session_ttl(ttl_s: float) -> str:
    """Consul's TTL string for `ttl_s`, raised or capped into Consul's 10 s – 24 h."""
    if ttl_s <= 0:
        raise ValidationError(f"lease ttl_s: must be > 0, not {ttl_s}")
    return f"{min(max(math.ceil(ttl_s), MIN_SESSION_TTL_S), MAX_SESSION_TTL_S)}s"


def session_create_body(ttl_s: float, name: str = "isthmus") -> dict[str, str]:
    return {"Name": name, "TTL": session_ttl(ttl_s), "Behavior": "delete", "LockDelay": "0s"}


def encode_txn(ops: Sequence[Put | Delete], compare: Sequence[Compare] = ()) -> list[dict[str, Any]]:
    """The body of PUT /v1/txn: the compares first, then the writes."""
    if len(ops) + len(compare) > MAX_TXN_OPS:
        raise ValidationError(
            f"consul txn: {len(ops) + len(compare)} operations, at most {MAX_TXN_OPS} fit in one transaction"
        )
    body: list[dict[str, Any]] = []
    for guard in compare:
        if guard.mod_revision == 0:
            body.append({"KV": {"Verb": "check-not-exists", "Key": to_consul_key(guard.key)}})
        else:
            body.append(
                {"KV": {"Verb": "check-index", "Key": to_consul_key(guard.key), "Index": guard.mod_revision}}
            )
    for op in ops:
        if isinstance(op, Put):
            kv: dict[str, Any] = {
                "Verb": "set",
                "Key": to_consul_key(op.key),
                "Value": base64.b64encode(op.value).decode("ascii"),
            }
            if op.lease:
                kv["Verb"] = "lock"
                kv["Session"] = lease_to_session(op.lease)
            body.append({"KV": kv})
        elif isinstance(op, Delete):
            verb = "delete-tree" if op.prefix else "delete"
            body.append({"KV": {"Verb": verb, "Key": to_consul_key(op.key)}})
        else:
            raise ValidationError(f"txn op must be Put or Delete, not {type(op).__name__}")
    return body


def decode_entry(entry: Mapping[str, Any]) -> KeyValue:
    value = entry.get("Value")
    return KeyValue(
        key=from_consul_key(entry["Key"]),
        value=base64.b64decode(value) if value else b"",
        mod_revision=int(entry.get("ModifyIndex", 0)),
        lease=session_to_lease(entry.get("Session")),
    )


def decode_entries(entries: Sequence[Mapping[str, Any]] | None) -> dict[str, KeyValue]:
    """A `?recurse` answer (None for a 404) as {key: KeyValue}, sorted by key."""
    decoded = [decode_entry(e) for e in entries or ()]
    return {kv.key: kv for kv in sorted(decoded, key=lambda kv: kv.key)}


def txn_revision(answer: Mapping[str, Any]) -> int:
    """Highest ModifyIndex among a successful txn's results (0 when it only deleted)."""
    indexes = [int(r["KV"].get("ModifyIndex", 0)) for r in answer.get("Results") or () if r.get("KV")]
    return max(indexes, default=0)


def txn_failure(
    answer: Mapping[str, Any], ops: Sequence[Put | Delete], compare: Sequence[Compare]
) -> RegistryError:
    """The error of a rolled-back txn (HTTP 409)."""
    errors = answer.get("Errors") or []
    if not errors:
        return RegistryError(f"consul rolled back the transaction without saying why: {answer}")
    first = min(errors, key=lambda e: int(e.get("OpIndex", 0)))
    index, what = int(first.get("OpIndex", 0)), str(first.get("What", ""))
    if index < len(compare):
        guard = compare[index]
        return Conflict(f"{guard.key}: mod_revision is not {guard.mod_revision} ({what}); nothing written")
    op = ops[index - len(compare)] if index - len(compare) < len(ops) else None
    if isinstance(op, Put) and op.lease and "session" in what.lower():
        return LeaseExpired(op.lease)
    key = getattr(op, "key", "?")
    return RegistryError(f"consul refused the transaction at {key}: {what}")


def diff_events(
    old: Mapping[str, KeyValue],
    new: Mapping[str, KeyValue],
    delete_revisions: Mapping[str, int],
    default_delete_revision: int,
) -> list[WatchEvent]:
    """Put and delete events turning `old` into `new`, sorted by revision then key."""
    events = [
        WatchEvent("put", key, kv.value, kv.mod_revision)
        for key, kv in new.items()
        if key not in old or old[key].mod_revision != kv.mod_revision
    ]
    events += [
        WatchEvent("delete", key, b"", delete_revisions.get(key, default_delete_revision))
        for key in old
        if key not in new
    ]
    return sorted(events, key=lambda e: (e.revision, e.key))


def group_batches(events: Sequence[WatchEvent], after_revision: int) -> list[WatchBatch]:
    """One batch per revision; events at or below `after_revision` move up to just above it."""
    batches: list[WatchBatch] = []
    floor = after_revision + 1
    current: list[WatchEvent] = []
    for event in events:
        if event.revision < floor:
            event = WatchEvent(event.kind, event.key, event.value, floor)
        if current and current[-1].revision != event.revision:
            batches.append(WatchBatch(revision=current[-1].revision, events=tuple(current)))
            current = []
        current.append(event)
        floor = event.revision
    if current:
        batches.append(WatchBatch(revision=current[-1].revision, events=tuple(current)))
    return batches


def normalize_address(address: str) -> str:
    text = address.strip().rstrip("/")
    if "://" not in text:
        text = f"http://{text}"
    hostport = text.split("://", 1)[1]
    host, _, port = hostport.rpartition(":")
    if (
        not text.startswith(("http://", "https://"))
        or not host
        or not port.isdigit()
        or not 0 < int(port) < 65536
    ):
        raise ValidationError(f"consul address: {address!r} is not host:port")
    return text


# ---------------------------------------------------------------------------
# The backend (trio I/O).
# ---------------------------------------------------------------------------


class ConsulBackend(Backend):
    """A registry in the KV store of the Consul agent at `address` (`host:port`)."""

    kind = "consul"

    def __init__(
        self,
        address: str,
        *,
        request_timeout_s: float = 5.0,
        connect_timeout_s: float = 1.0,
        wait_s: float = 30.0,
        token: str | None = None,
    ) -> None:
        self._base = normalize_address(address)
        self.address = self._base.split("://", 1)[1]
        self._request_timeout_s = request_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._wait_s = wait_s
        headers = {"X-Consul-Token": token} if token else {}
        # trust_env=False: never route registry traffic through a proxy from the environment.
        self._client = httpx.AsyncClient(
            base_url=self._base,
            headers=headers,
            trust_env=False,
            timeout=httpx.Timeout(request_timeout_s, connect=connect_timeout_s),
        )
        self._baselines: OrderedDict[str, tuple[int, dict[str, KeyValue]]] = OrderedDict()

    def __repr__(self) -> str:
        return f"<ConsulBackend {self.address} baselines={list(self._baselines)}>"

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        ok: tuple[int, ...] = (200,),
        http_timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        """One request; retries "no leader" (5xx) and timeouts until `request_timeout_s`."""
        deadline = trio.current_time() + self._request_timeout_s
        delay = 0.05
        while True:
            try:
                response = await self._client.request(
                    method,
                    path,
                    params=params,
                    json=json,
                    timeout=http_timeout if http_timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                raise RegistryUnavailable(
                    self.address, f"cannot connect to {self._base}{path}: {exc or type(exc).__name__}", HINT
                ) from exc
            except httpx.TransportError as exc:
                reason = f"{path}: {type(exc).__name__} {exc}".strip()
            else:
                if response.status_code in ok:
                    return response
                if response.status_code < 500:
                    text = response.text.strip().replace("\n", " ")[:200]
                    raise RegistryError(
                        f"consul at {self.address}: {method} {path}: HTTP {response.status_code} {text}"
                    )
                reason = f"{path}: HTTP {response.status_code} {response.text.strip()[:200]}"
            if trio.current_time() + delay >= deadline:
                raise RegistryUnavailable(self.address, f"{reason} (for {self._request_timeout_s:g}s)", HINT)
            await trio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _list(
        self, prefix: str, *, index: int = 0, wait_s: float = 0.0
    ) -> tuple[int, dict[str, KeyValue]]:
        """`GET /v1/kv/<prefix>?recurse` (blocking when `index` is set): (X-Consul-Index, entries)."""
        path = "/v1/kv/" + quote(to_consul_key(prefix) if prefix else "", safe="/")
        params = {"recurse": ""}
        http_timeout = None
        if index:
            params.update(index=str(index), wait=f"{math.ceil(wait_s)}s")
            # Consul may add up to wait/16 to the wait.
            http_timeout = httpx.Timeout(
                wait_s * 17 / 16 + self._request_timeout_s, connect=self._connect_timeout_s
            )
        response = await self._request("GET", path, params=params, ok=(200, 404), http_timeout=http_timeout)
        revision = int(response.headers.get("X-Consul-Index", 0))
        entries = decode_entries(response.json() if response.status_code == 200 else None)
        return revision, entries

    async def _kv_index(self, key: str = "/isthmus") -> int:
        """The KV store's index (a single-key read reports the whole table's index)."""
        path = "/v1/kv/" + quote(to_consul_key(key), safe="/")
        response = await self._request("GET", path, ok=(200, 404))
        return int(response.headers.get("X-Consul-Index", 0))

    def _remember(self, prefix: str, revision: int, entries: dict[str, KeyValue]) -> None:
        self._baselines[prefix] = (revision, entries)
        self._baselines.move_to_end(prefix)
        while len(self._baselines) > BASELINES_KEPT:
            self._baselines.popitem(last=False)

    def _baseline(self, prefix: str, revision: int) -> dict[str, KeyValue] | None:
        """The state under `prefix` at `revision`, when this backend knows it."""
        if revision == 0:
            return {}
        for seen_prefix, (seen_revision, entries) in reversed(self._baselines.items()):
            if seen_revision == revision and prefix.startswith(seen_prefix):
                return {k: kv for k, kv in entries.items() if k.startswith(prefix)}
        return None

    # -- the Backend interface ------------------------------------------------

    async def txn(self, ops: Sequence[Put | Delete], compare: Sequence[Compare] = ()) -> int:
        body = encode_txn(ops, compare)
        if not body:
            return await self._kv_index()
        response = await self._request("PUT", "/v1/txn", json=body, ok=(200, 409))
        answer = response.json()
        if response.status_code == 409:
            raise txn_failure(answer, ops, compare)
        revision = txn_revision(answer)
        if revision == 0:  # only deletes: no results to read an index from
            revision = await self._kv_index(ops[0].key if ops else "/isthmus")
        return revision

    async def get_prefix(self, prefix: str) -> tuple[int, list[KeyValue]]:
        revision, entries = await self._list(prefix)
        self._remember(prefix, revision, entries)
        return revision, list(entries.values())

    async def _delete_revisions(self, keys: Sequence[str], ceiling: int) -> dict[str, int]:
        """Tombstone index of each deleted key (its own `?recurse` index), capped at `ceiling`."""
        if len(keys) > EXACT_DELETE_LOOKUPS:
            return {}
        found = {}
        for key in keys:
            revision, _ = await self._list(key)
            if revision:
                found[key] = min(revision, ceiling)
        return found

    async def watch(self, prefix: str, from_revision: int) -> AsyncIterator[WatchBatch]:
        """Blocking queries diffed into batches; see the module docstring for how it resumes."""
        known = self._baseline(prefix, from_revision)
        index = from_revision
        if known is None:
            index, entries = await self._list(prefix)
            yield WatchBatch(revision=index, snapshot=tuple(entries.values()))
            known = entries
        failing_since: float | None = None
        while True:
            asked_at = trio.current_time()
            try:
                revision, entries = await self._list(prefix, index=max(index, 1), wait_s=self._wait_s)
            except RegistryUnavailable:
                now = trio.current_time()
                if failing_since is None:
                    failing_since = now
                elif now - failing_since > self._request_timeout_s:
                    raise
                await trio.sleep(0.5)
                continue
            failing_since = None
            if revision < index:
                # The index went backwards (a restored snapshot): start again from a snapshot.
                yield WatchBatch(revision=revision, snapshot=tuple(entries.values()))
                known, index = entries, revision
                continue
            if revision == index:
                # The wait ran out with no change. An answer that came back at once with no change
                # would make this loop spin (Consul's docs warn of it): slow down then.
                if trio.current_time() - asked_at < 1.0:
                    await trio.sleep(0.5)
                continue
            gone = [key for key in known if key not in entries]
            delete_revisions = await self._delete_revisions(gone, revision) if gone else {}
            events = diff_events(known, entries, delete_revisions, revision)
            for batch in group_batches(events, index):
                yield batch
            known, index = entries, revision

    async def grant_lease(self, ttl_s: float) -> int:
        response = await self._request("PUT", "/v1/session/create", json=session_create_body(ttl_s))
        return session_to_lease(response.json()["ID"])

    async def keepalive(self, lease: int) -> None:
        response = await self._request("PUT", f"/v1/session/renew/{lease_to_session(lease)}", ok=(200, 404))
        if response.status_code == 404 or not response.json():
            raise LeaseExpired(lease)

    async def revoke(self, lease: int) -> None:
        await self._request("PUT", f"/v1/session/destroy/{lease_to_session(lease)}")

    async def status(self) -> BackendStatus:
        try:
            leader = (await self._request("GET", "/v1/status/leader")).json()
            revision = await self._kv_index()
        except RegistryError as exc:
            reason = exc.reason if isinstance(exc, RegistryUnavailable) else str(exc)
            return BackendStatus(self.kind, self.address, 0, False, reason)
        if not leader:
            return BackendStatus(self.kind, self.address, revision, False, "consul has no cluster leader")
        return BackendStatus(self.kind, self.address, revision, True, f"consul leader {leader}")

    async def aclose(self) -> None:
        await self._client.aclose()
