"""Test support for registry backends: `FakeBackend` and the conformance suite `check_backend`.

Owns the in-memory backend (for unit tests of everything built on a `Backend`) and the
one suite every backend must pass, in the style of trio's `check_two_way_stream`:

    async def test_conformance():
        await check_backend(lambda: open_my_backend(...))

`make_backend` is a zero-argument callable returning an async context manager that yields
a fresh, empty `Backend`; every check opens its own. What each check expects is written in
its docstring. Imports trio and the registry only (never `gateway` or `federation`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import attrs
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
from registry.errors import Conflict, LeaseExpired, RegistryError

MakeBackend = Callable[[], contextlib.AbstractAsyncContextManager[Backend]]


# ---------------------------------------------------------------------------------------------
# FakeBackend
# ---------------------------------------------------------------------------------------------


@attrs.define
class _Lease:
    ttl_s: float
    expires_at: float


class FakeBackend(Backend):
    """An in-memory `Backend` with etcd's semantics (revisions start at 1, one per writing txn).

    Time for leases comes from `clock()` when given (a test can move it by hand), else from
    trio's clock, so a MockClock makes lease expiry instant and exact. Expired leases are
    swept on every call; a watcher on trio's clock also wakes at the next expiry.
    `fail_with` set to an exception makes every call raise it (a backend that is down).
    """

    kind = "fake"

    def __init__(self, *, clock: Callable[[], float] | None = None, address: str = "memory") -> None:
        self.address = address
        self._clock = clock
        self._kv: dict[str, KeyValue] = {}
        self._revision = 1
        self._compacted = 0
        self._log: list[tuple[int, WatchEvent]] = []
        self._leases: dict[int, _Lease] = {}
        self._lease_ids = itertools.count(0x1000)
        self._changed = trio.Event()
        self.fail_with: BaseException | None = None
        self.txn_count = 0

    # -- time and sweeping --------------------------------------------------------------------

    def _now(self) -> float:
        return self._clock() if self._clock is not None else trio.current_time()

    def _check_up(self) -> None:
        if self.fail_with is not None:
            raise self.fail_with

    def _sweep(self) -> None:
        now = self._now()
        for lease_id in [i for i, lease in self._leases.items() if lease.expires_at <= now]:
            self._end_lease(lease_id)

    def _end_lease(self, lease_id: int) -> None:
        del self._leases[lease_id]
        doomed = [k for k, kv in self._kv.items() if kv.lease == lease_id]
        if doomed:
            self._commit([Delete(k) for k in doomed])

    def _notify(self) -> None:
        event, self._changed = self._changed, trio.Event()
        event.set()

    def _commit(self, ops: Sequence[Put | Delete]) -> int:
        events: list[WatchEvent] = []
        revision = self._revision + 1
        staged = dict(self._kv)
        for op in ops:
            if isinstance(op, Put):
                if op.lease and op.lease not in self._leases:
                    raise LeaseExpired(op.lease)
                staged[op.key] = KeyValue(op.key, op.value, revision, op.lease)
                events.append(WatchEvent("put", op.key, op.value, revision))
            else:
                keys = [k for k in staged if k.startswith(op.key)] if op.prefix else [op.key]
                for key in sorted(keys):
                    if staged.pop(key, None) is not None:
                        events.append(WatchEvent("delete", key, b"", revision))
        if not events:
            return self._revision
        self._kv = staged
        self._revision = revision
        self._log.extend((revision, e) for e in events)
        self._notify()
        return revision

    # -- the Backend interface ----------------------------------------------------------------

    async def txn(self, ops: Sequence[Put | Delete], compare: Sequence[Compare] = ()) -> int:
        self._check_up()
        await trio.lowlevel.checkpoint()
        self._sweep()
        for guard in compare:
            current = self._kv.get(guard.key)
            if (current.mod_revision if current else 0) != guard.mod_revision:
                raise Conflict(f"{guard.key}: mod_revision is {current.mod_revision if current else 0}, not {guard.mod_revision}")
        self.txn_count += 1
        return self._commit(ops)

    async def get_prefix(self, prefix: str) -> tuple[int, list[KeyValue]]:
        self._check_up()
        await trio.lowlevel.checkpoint()
        self._sweep()
        return self._revision, [self._kv[k] for k in sorted(self._kv) if k.startswith(prefix)]

    async def watch(self, prefix: str, from_revision: int) -> AsyncIterator[WatchBatch]:
        self._check_up()
        last = from_revision
        while True:
            self._check_up()
            self._sweep()
            if last < self._compacted:
                snapshot = tuple(self._kv[k] for k in sorted(self._kv) if k.startswith(prefix))
                last = self._revision
                yield WatchBatch(revision=last, snapshot=snapshot)
                continue
            pending = [(rev, e) for rev, e in self._log if rev > last and e.key.startswith(prefix)]
            if pending:
                for rev, group in itertools.groupby(pending, key=lambda item: item[0]):
                    last = rev
                    yield WatchBatch(revision=rev, events=tuple(e for _, e in group))
                continue
            last = max(last, self._revision)
            changed = self._changed
            wait_s = math.inf
            if self._clock is None and self._leases:
                wait_s = max(0.0, min(lease.expires_at for lease in self._leases.values()) - self._now())
            with trio.move_on_after(wait_s):
                await changed.wait()

    async def grant_lease(self, ttl_s: float) -> int:
        self._check_up()
        await trio.lowlevel.checkpoint()
        lease_id = next(self._lease_ids)
        self._leases[lease_id] = _Lease(ttl_s, self._now() + ttl_s)
        self._notify()  # watchers re-arm their wake-up for the new expiry
        return lease_id

    async def keepalive(self, lease: int) -> None:
        self._check_up()
        await trio.lowlevel.checkpoint()
        self._sweep()
        if lease not in self._leases:
            raise LeaseExpired(lease)
        self._leases[lease].expires_at = self._now() + self._leases[lease].ttl_s

    async def revoke(self, lease: int) -> None:
        self._check_up()
        await trio.lowlevel.checkpoint()
        self._sweep()
        if lease in self._leases:
            self._end_lease(lease)

    async def status(self) -> BackendStatus:
        await trio.lowlevel.checkpoint()
        if self.fail_with is not None:
            return BackendStatus(self.kind, self.address, 0, False, str(self.fail_with))
        return BackendStatus(self.kind, self.address, self._revision, True, f"{len(self._kv)} keys")

    async def compact(self, revision: int) -> None:
        self._check_up()
        await trio.lowlevel.checkpoint()
        self._compacted = max(self._compacted, min(revision, self._revision))
        self._log = [(rev, e) for rev, e in self._log if rev > self._compacted]


@contextlib.asynccontextmanager
async def open_fake_backend(**kwargs: Any) -> AsyncIterator[FakeBackend]:
    backend = FakeBackend(**kwargs)
    try:
        yield backend
    finally:
        await backend.aclose()


# ---------------------------------------------------------------------------------------------
# The conformance suite
# ---------------------------------------------------------------------------------------------

P = "/isthmus-conformance/"  # every check writes under this prefix only


class _Collector:
    """Runs a watch in the background and gathers its events (and snapshots) for the checks."""

    def __init__(self) -> None:
        self.events: list[WatchEvent] = []
        self.snapshots: list[tuple[int, tuple[KeyValue, ...]]] = []
        self.revisions: list[int] = []
        self._arrived = trio.Event()

    async def run(self, backend: Backend, prefix: str, from_revision: int, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with contextlib.aclosing(backend.watch(prefix, from_revision)) as batches:
            task_status.started()
            async for batch in batches:
                self.revisions.append(batch.revision)
                if batch.snapshot is not None:
                    self.snapshots.append((batch.revision, batch.snapshot))
                self.events.extend(batch.events)
                self._arrived.set()
                self._arrived = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool], what: str, timeout_s: float) -> None:
        try:
            with trio.fail_after(timeout_s):
                while not predicate():
                    await self._arrived.wait()
        except trio.TooSlowError:
            raise AssertionError(f"watch: {what} did not arrive within {timeout_s} s; got {self.events!r}") from None


async def check_txn_atomicity(make_backend: MakeBackend, **_: Any) -> None:
    """A txn's puts all land at the returned revision; a failing compare writes nothing.

    Expects: `txn` returns the new revision and every key it put has that `mod_revision`;
    `Compare(key, 0)` holds for a missing key; a failed compare raises `Conflict` and no op
    of that txn is visible afterwards (nor is the revision advanced).
    """
    async with make_backend() as b:
        rev = await b.txn([Put(P + "a", b"1"), Put(P + "b", b"2")], [Compare(P + "a", 0)])
        _, kvs = await b.get_prefix(P)
        assert [(kv.key, kv.value, kv.mod_revision) for kv in kvs] == [(P + "a", b"1", rev), (P + "b", b"2", rev)], kvs
        try:
            await b.txn([Put(P + "a", b"changed"), Put(P + "c", b"3"), Delete(P + "b")], [Compare(P + "a", 0)])
        except Conflict:
            pass
        else:
            raise AssertionError("txn with a failing compare did not raise Conflict")
        after, kvs = await b.get_prefix(P)
        assert [(kv.key, kv.value) for kv in kvs] == [(P + "a", b"1"), (P + "b", b"2")], f"a failed txn wrote: {kvs}"
        assert after == rev, f"a failed txn moved the revision from {rev} to {after}"
        rev2 = await b.txn([Put(P + "a", b"again")], [Compare(P + "a", rev), Compare(P + "b", rev)])
        assert rev2 > rev
        _, kvs = await b.get_prefix(P + "a")
        assert [(kv.value, kv.mod_revision) for kv in kvs] == [(b"again", rev2)]


async def check_revisions(make_backend: MakeBackend, *, consecutive_revisions: bool = True, **_: Any) -> None:
    """Every txn that writes gets one new revision shared by its writes; reads report a revision.

    Expects (with `consecutive_revisions=True`, as etcd and sqlite): three writing txns get
    revisions r, r+1, r+2. Backends whose index jumps (Consul's raft index) pass
    `consecutive_revisions=False` and only need strictly increasing revisions. `get_prefix`
    reports a revision at least the last write's.
    """
    async with make_backend() as b:
        revs = [await b.txn([Put(P + f"k{i}", b"v"), Put(P + f"j{i}", b"v")]) for i in range(3)]
        if consecutive_revisions:
            assert revs == [revs[0], revs[0] + 1, revs[0] + 2], f"revisions are not consecutive: {revs}"
        else:
            assert revs == sorted(set(revs)), f"revisions do not increase: {revs}"
        read_rev, _ = await b.get_prefix(P)
        assert read_rev >= revs[-1], f"get_prefix revision {read_rev} is older than the last write {revs[-1]}"


async def check_prefix_reads(make_backend: MakeBackend, **_: Any) -> None:
    """`get_prefix` returns exactly the keys under the prefix, sorted by key, values intact.

    Expects: `/x/a/` does not match `/x/ab` nor `/x/b/...`; bytes values round-trip
    unchanged (including non-UTF-8 bytes); an empty prefix match is an empty list.
    """
    async with make_backend() as b:
        binary = bytes(range(256))
        await b.txn([Put(P + "a/2", b"two"), Put(P + "a/1", binary), Put(P + "ab", b"x"), Put(P + "b/1", b"y")])
        _, kvs = await b.get_prefix(P + "a/")
        assert [(kv.key, kv.value) for kv in kvs] == [(P + "a/1", binary), (P + "a/2", b"two")], kvs
        _, none = await b.get_prefix(P + "zzz/")
        assert none == []
        _, every = await b.get_prefix(P)
        assert [kv.key for kv in every] == [P + "a/1", P + "a/2", P + "ab", P + "b/1"]


async def check_deletes(make_backend: MakeBackend, **_: Any) -> None:
    """Single and prefix deletes remove exactly what they name; deleting a missing key is no error."""
    async with make_backend() as b:
        await b.txn([Put(P + "d/1", b"1"), Put(P + "d/2", b"2"), Put(P + "e", b"3"), Put(P + "f/1", b"4")])
        await b.txn([Delete(P + "e")])
        await b.txn([Delete(P + "d/", prefix=True)])
        await b.txn([Delete(P + "missing"), Put(P + "g", b"5")])
        _, kvs = await b.get_prefix(P)
        assert [kv.key for kv in kvs] == [P + "f/1", P + "g"], kvs


async def check_watch_order(make_backend: MakeBackend, *, watch_timeout_s: float = 10.0, **_: Any) -> None:
    """A watch from revision r delivers every later change under its prefix, in order, once.

    Expects: changes made before the watch started but after r are delivered too; events
    carry their own revision, revisions never go down; deletes arrive as kind "delete" with
    an empty value; keys outside the prefix are not delivered. Batches without events
    (progress notifications) are allowed and ignored.
    """
    async with make_backend() as b:
        start, _ = await b.get_prefix(P)
        await b.txn([Put(P + "w/1", b"a")])
        await b.txn([Put(P + "other", b"not watched")])
        collector = _Collector()
        async with trio.open_nursery() as nursery:
            await nursery.start(collector.run, b, P + "w/", start)
            await b.txn([Put(P + "w/2", b"b"), Put(P + "w/3", b"c")])
            await b.txn([Delete(P + "w/1")])
            await b.txn([Put(P + "w/2", b"b2")])
            await collector.wait_for(lambda: len(collector.events) >= 5, "five changes", watch_timeout_s)
            nursery.cancel_scope.cancel()
        got = [(e.kind, e.key, e.value) for e in collector.events]
        assert got == [
            ("put", P + "w/1", b"a"),
            ("put", P + "w/2", b"b"),
            ("put", P + "w/3", b"c"),
            ("delete", P + "w/1", b""),
            ("put", P + "w/2", b"b2"),
        ], got
        revs = [e.revision for e in collector.events]
        assert revs == sorted(revs) and revs[1] == revs[2] and len(set(revs)) == 4, revs


async def check_watch_after_compaction(make_backend: MakeBackend, *, can_compact: bool = True, watch_timeout_s: float = 10.0, **_: Any) -> None:
    """A watch from a compacted revision resumes with one snapshot batch, then changes.

    Expects: after `compact(r)`, `watch(prefix, older)` yields a batch with `snapshot` set
    to every live key under the prefix (deleted keys absent) and then later changes as
    events. Skipped with `can_compact=False` (backends without `compact`).
    """
    if not can_compact:
        return
    async with make_backend() as b:
        first = await b.txn([Put(P + "c/1", b"1")])
        await b.txn([Put(P + "c/2", b"2")])
        await b.txn([Delete(P + "c/1")])
        latest = await b.txn([Put(P + "c/3", b"3")])
        await b.compact(latest)
        collector = _Collector()
        async with trio.open_nursery() as nursery:
            await nursery.start(collector.run, b, P + "c/", first - 1)
            await b.txn([Put(P + "c/4", b"4")])
            await collector.wait_for(
                lambda: bool(collector.snapshots) and any(e.key == P + "c/4" for e in collector.events),
                "a snapshot and then the put of c/4",
                watch_timeout_s,
            )
            nursery.cancel_scope.cancel()
        snap_rev, snapshot = collector.snapshots[0]
        assert [(kv.key, kv.value) for kv in snapshot] == [(P + "c/2", b"2"), (P + "c/3", b"3")], snapshot
        assert snap_rev >= latest
        assert [e.key for e in collector.events] == [P + "c/4"], collector.events


async def check_lease_expiry(
    make_backend: MakeBackend, *, lease_ttl_s: float = 1.0, lease_deadline_s: float = 10.0, **_: Any
) -> None:
    """A key put with a lease vanishes after the TTL without keepalives, and watchers see the delete.

    Expects: `grant_lease(ttl)` returns a lease id; the key shows that `lease`; while
    `keepalive` is called every ttl/4 for 1.5 × ttl the key stays; after keepalives stop the
    key is gone within `lease_deadline_s` (polled, real time) and a watch on it delivers a
    "delete"; `keepalive` of that lease then raises `RegistryError` (`LeaseExpired`).
    Backends with a minimum TTL (etcd: about 2 s) pass a larger `lease_ttl_s`.
    """
    async with make_backend() as b:
        lease = await b.grant_lease(lease_ttl_s)
        start = await b.txn([Put(P + "l/1", b"alive", lease=lease), Put(P + "l/keep", b"no lease")])
        _, kvs = await b.get_prefix(P + "l/")
        assert [(kv.key, kv.lease) for kv in kvs] == [(P + "l/1", lease), (P + "l/keep", 0)], kvs
        with trio.move_on_after(lease_ttl_s * 1.5):
            while True:
                await b.keepalive(lease)
                await trio.sleep(lease_ttl_s / 4)
        _, kvs = await b.get_prefix(P + "l/")
        assert P + "l/1" in [kv.key for kv in kvs], "a lease kept alive expired"
        collector = _Collector()
        async with trio.open_nursery() as nursery:
            await nursery.start(collector.run, b, P + "l/", start)
            await collector.wait_for(
                lambda: any(e.kind == "delete" and e.key == P + "l/1" for e in collector.events),
                "the delete of a key whose lease expired",
                lease_ttl_s + lease_deadline_s,
            )
            nursery.cancel_scope.cancel()
        _, kvs = await b.get_prefix(P + "l/")
        assert [kv.key for kv in kvs] == [P + "l/keep"], kvs
        try:
            await b.keepalive(lease)
        except RegistryError:
            pass
        else:
            raise AssertionError("keepalive of an expired lease did not raise")


async def check_revoke(make_backend: MakeBackend, *, lease_ttl_s: float = 1.0, **_: Any) -> None:
    """Revoking a lease deletes all its keys at once; the lease cannot be kept alive after."""
    async with make_backend() as b:
        lease = await b.grant_lease(max(lease_ttl_s, 30.0))
        await b.txn([Put(P + "r/1", b"1", lease=lease), Put(P + "r/2", b"2", lease=lease), Put(P + "r/3", b"3")])
        await b.revoke(lease)
        _, kvs = await b.get_prefix(P + "r/")
        assert [kv.key for kv in kvs] == [P + "r/3"], kvs
        try:
            await b.keepalive(lease)
        except RegistryError:
            pass
        else:
            raise AssertionError("keepalive of a revoked lease did not raise")


async def check_status(make_backend: MakeBackend, **_: Any) -> None:
    """`status()` of a live backend: its kind, an address, reachable, a revision ≥ the last write."""
    async with make_backend() as b:
        rev = await b.txn([Put(P + "s", b"1")])
        st = await b.status()
        assert st.reachable, st
        assert st.backend == b.kind and st.backend in ("sqlite", "etcd", "consul", "fake"), st
        assert isinstance(st.address, str) and st.address, st
        assert st.revision >= rev, st


CHECKS = (
    check_txn_atomicity,
    check_revisions,
    check_prefix_reads,
    check_deletes,
    check_watch_order,
    check_watch_after_compaction,
    check_lease_expiry,
    check_revoke,
    check_status,
)


async def check_backend(
    make_backend: MakeBackend,
    *,
    can_compact: bool = True,
    consecutive_revisions: bool = True,
    lease_ttl_s: float = 1.0,
    lease_deadline_s: float = 10.0,
    watch_timeout_s: float = 10.0,
    only: Sequence[str] = (),
) -> None:
    """Run every conformance check against fresh backends from `make_backend`.

    Keywords adapt the suite to a backend's documented limits (see each check's docstring);
    `only` runs just the named checks (e.g. `("check_lease_expiry",)`), for a test per check.
    An `AssertionError` names the check and what differed.
    """
    options = {
        "can_compact": can_compact,
        "consecutive_revisions": consecutive_revisions,
        "lease_ttl_s": lease_ttl_s,
        "lease_deadline_s": lease_deadline_s,
        "watch_timeout_s": watch_timeout_s,
    }
    for check in CHECKS:
        if only and check.__name__ not in only:
            continue
        try:
            await check(make_backend, **options)
        except AssertionError as exc:
            raise AssertionError(f"{check.__name__}: {exc}") from exc
