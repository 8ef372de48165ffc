"""The embedded default backend: one SQLite file, shared safely by several processes on one machine.

Owns the on-disk layout and its concurrency rules:

- WAL mode, `synchronous=NORMAL`, a busy timeout: readers never block writers, and
  several processes (control plane, CLI, gateways) open the same file.
- Every write is one `BEGIN IMMEDIATE` transaction: compares, puts and deletes, one new
  revision in `meta.revision`, and one row per change in the `changes` log at that revision.
- Watches read the change log after their revision. They wait for news by polling
  `meta.revision` every `poll_interval_s` (10 ms: a primary-key lookup, one thread hop),
  one poller per open backend however many watches; writes made through the same backend
  wake its watchers at once.
- The change log keeps the last `history_revisions` revisions (trimmed every 1000); a watch
  from before that resumes with a snapshot of the live keys. `compact(r)` trims by hand.
- Leases are rows with an expiry timestamp on the wall clock (shared by processes);
  whoever touches the file next (a write, a read, a watcher's poll) deletes the keys of
  expired leases at a new revision, so watchers see the deletes.

Every blocking sqlite call runs in `trio.to_thread.run_sync`, one at a time per backend.
sqlite errors become `RegistryUnavailable` naming the file. Imports trio and the registry
only (never `gateway` or `federation`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import trio

from registry.backend import Backend, BackendStatus, Compare, Delete, KeyValue, Put, WatchBatch, WatchEvent
from registry.errors import Conflict, LeaseExpired, RegistryUnavailable

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, value BLOB NOT NULL, mod_revision INTEGER NOT NULL, lease INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS kv_by_lease ON kv (lease) WHERE lease != 0;
CREATE TABLE IF NOT EXISTS changes (
    revision INTEGER NOT NULL, seq INTEGER NOT NULL, deleted INTEGER NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (revision, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY AUTOINCREMENT, ttl_s REAL NOT NULL, expires_at REAL NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 1), ('compact_revision', 0), ('schema', 1);
"""

HINT = "check that the file's directory exists and is writable, or pass --registry URL"
CHUNK_REVISIONS = 1000  # a watch reads the log this many revisions at a time


def prefix_end(prefix: str) -> str:
    """The smallest string greater than every string starting with `prefix` ('' means no bound)."""
    if not prefix:
        return ""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _range(prefix: str) -> tuple[str, tuple[Any, ...]]:
    end = prefix_end(prefix)
    if not prefix:
        return "1", ()
    return "key >= ? AND key < ?", (prefix, end)


class SqliteBackend(Backend):
    """A `Backend` in one SQLite file; open it with `open_sqlite_backend(path)`."""

    kind = "sqlite"

    def __init__(
        self,
        path: str,
        *,
        poll_interval_s: float = 0.01,
        history_revisions: int = 10_000,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = str(path)
        self.address = os.path.abspath(self.path)
        self.poll_interval_s = poll_interval_s
        self.history_revisions = history_revisions
        self._wall_clock = wall_clock  # lease expiry is shared by processes: wall-clock seconds
        self._con: sqlite3.Connection | None = None
        self._lock = trio.Lock()
        self._known_revision = 0
        self._revision_changed = trio.Event()
        self._polling = False

    # -- plumbing -----------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._lock:
            try:
                return await trio.to_thread.run_sync(fn, *args)
            except sqlite3.OperationalError as exc:
                raise RegistryUnavailable(self.address, str(exc), HINT) from None
            except sqlite3.DatabaseError as exc:
                raise RegistryUnavailable(self.address, str(exc), "is this a registry file?") from None

    def _connection(self) -> sqlite3.Connection:
        if self._con is None:
            raise RegistryUnavailable(self.address, "the backend is closed")
        return self._con

    def _open_sync(self) -> None:
        directory = os.path.dirname(self.address)
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise sqlite3.OperationalError(f"cannot create {directory}: {exc.strerror}") from None
        con = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        try:
            con.execute("PRAGMA busy_timeout = 10000")
            mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch to WAL mode (journal_mode is {mode})")
            con.execute("PRAGMA synchronous = NORMAL")
            con.execute("BEGIN IMMEDIATE")
            try:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        con.execute(statement)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        except BaseException:
            con.close()
            raise
        self._con = con
        self._known_revision = self._revision_sync()

    async def open(self) -> None:
        await self._run(self._open_sync)

    async def aclose(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            async with self._lock:
                await trio.to_thread.run_sync(con.close)
        self._wake()

    def _wake(self) -> None:
        event, self._revision_changed = self._revision_changed, trio.Event()
        event.set()

    def _saw_revision(self, revision: int) -> None:
        if revision > self._known_revision:
            self._known_revision = revision
            self._wake()

    def _revision_sync(self) -> int:
        return self._connection().execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]

    # -- writes (all inside BEGIN IMMEDIATE) ------------------------------------------------------

    def _write(self, body: Callable[[sqlite3.Connection, int], T]) -> T:
        """Run `body(con, revision_after_sweep)` in one write transaction."""
        con = self._connection()
        con.execute("BEGIN IMMEDIATE")
        try:
            result = body(con, self._sweep_locked(con))
            con.execute("COMMIT")
            return result
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def _sweep_locked(self, con: sqlite3.Connection) -> int:
        """Delete the keys of expired leases at a new revision; the current revision after."""
        revision = con.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]
        expired = [row[0] for row in con.execute("SELECT id FROM leases WHERE expires_at <= ?", (self._wall_clock(),))]
        if not expired:
            return revision
        marks = ",".join("?" * len(expired))
        keys = [row[0] for row in con.execute(f"SELECT key FROM kv WHERE lease IN ({marks}) ORDER BY key", expired)]
        con.execute(f"DELETE FROM leases WHERE id IN ({marks})", expired)
        if keys:
            revision = self._commit_changes(con, revision, [(True, k, b"") for k in keys])
            con.execute(f"DELETE FROM kv WHERE lease IN ({marks})", expired)
        return revision

    def _commit_changes(self, con: sqlite3.Connection, revision: int, changes: list[tuple[bool, str, bytes]]) -> int:
        new = revision + 1
        con.executemany(
            "INSERT INTO changes (revision, seq, deleted, key, value) VALUES (?, ?, ?, ?, ?)",
            [(new, seq, int(deleted), key, value) for seq, (deleted, key, value) in enumerate(changes)],
        )
        con.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (new,))
        if new % 1000 == 0 and new > self.history_revisions:
            self._compact_locked(con, new - self.history_revisions)
        return new

    def _compact_locked(self, con: sqlite3.Connection, revision: int) -> None:
        con.execute("DELETE FROM changes WHERE revision <= ?", (revision,))
        con.execute("UPDATE meta SET value = max(value, ?) WHERE name = 'compact_revision'", (revision,))

    def _txn_sync(self, ops: Sequence[Put | Delete], compare: Sequence[Compare]) -> int:
        def body(con: sqlite3.Connection, revision: int) -> int:
            for guard in compare:
                row = con.execute("SELECT mod_revision FROM kv WHERE key = ?", (guard.key,)).fetchone()
                actual = row[0] if row else 0
                if actual != guard.mod_revision:
                    raise Conflict(f"{guard.key}: mod_revision is {actual}, not {guard.mod_revision}")
            new = revision + 1
            changes: list[tuple[bool, str, bytes]] = []
            leases_seen: set[int] = set()
            for op in ops:
                if isinstance(op, Put):
                    if op.lease and op.lease not in leases_seen:
                        if con.execute("SELECT 1 FROM leases WHERE id = ?", (op.lease,)).fetchone() is None:
                            raise LeaseExpired(op.lease)
                        leases_seen.add(op.lease)
                    con.execute(
                        "INSERT OR REPLACE INTO kv (key, value, mod_revision, lease) VALUES (?, ?, ?, ?)",
                        (op.key, bytes(op.value), new, op.lease),
                    )
                    changes.append((False, op.key, bytes(op.value)))
                elif op.prefix:
                    where, params = _range(op.key)
                    keys = [r[0] for r in con.execute(f"SELECT key FROM kv WHERE {where} ORDER BY key", params)]
                    con.execute(f"DELETE FROM kv WHERE {where}", params)
                    changes += [(True, k, b"") for k in keys]
                elif con.execute("DELETE FROM kv WHERE key = ?", (op.key,)).rowcount:
                    changes.append((True, op.key, b""))
            if not changes:
                return revision
            return self._commit_changes(con, revision, changes)

        return self._write(body)

    async def txn(self, ops: Sequence[Put | Delete], compare: Sequence[Compare] = ()) -> int:
        revision = await self._run(self._txn_sync, list(ops), list(compare))
        self._saw_revision(revision)
        return revision

    def _grant_sync(self, ttl_s: float) -> int:
        def body(con: sqlite3.Connection, revision: int) -> int:
            cur = con.execute("INSERT INTO leases (ttl_s, expires_at) VALUES (?, ?)", (ttl_s, self._wall_clock() + ttl_s))
            return int(cur.lastrowid or 0)

        return self._write(body)

    async def grant_lease(self, ttl_s: float) -> int:
        return await self._run(self._grant_sync, float(ttl_s))

    def _keepalive_sync(self, lease: int) -> int:
        def body(con: sqlite3.Connection, revision: int) -> int:
            cur = con.execute("UPDATE leases SET expires_at = ? + ttl_s WHERE id = ?", (self._wall_clock(), lease))
            if cur.rowcount == 0:
                raise LeaseExpired(lease)
            return revision

        return self._write(body)

    async def keepalive(self, lease: int) -> None:
        try:
            self._saw_revision(await self._run(self._keepalive_sync, lease))
        except LeaseExpired:
            await self._notice_sweeps()
            raise

    def _revoke_sync(self, lease: int) -> int:
        def body(con: sqlite3.Connection, revision: int) -> int:
            keys = [r[0] for r in con.execute("SELECT key FROM kv WHERE lease = ? ORDER BY key", (lease,))]
            con.execute("DELETE FROM leases WHERE id = ?", (lease,))
            if not keys:
                return revision
            con.execute("DELETE FROM kv WHERE lease = ?", (lease,))
            return self._commit_changes(con, revision, [(True, k, b"") for k in keys])

        return self._write(body)

    async def revoke(self, lease: int) -> None:
        self._saw_revision(await self._run(self._revoke_sync, lease))

    def _compact_sync(self, revision: int) -> None:
        def body(con: sqlite3.Connection, current: int) -> None:
            self._compact_locked(con, min(revision, current))

        self._write(body)

    async def compact(self, revision: int) -> None:
        await self._run(self._compact_sync, revision)

    # -- reads ----------------------------------------------------------------------------------

    def _poll_sync(self) -> int:
        """The current revision, sweeping expired leases first if there are any."""
        con = self._connection()
        row = con.execute(
            "SELECT (SELECT value FROM meta WHERE name = 'revision'), (SELECT min(expires_at) FROM leases)"
        ).fetchone()
        if row[1] is not None and row[1] <= self._wall_clock():
            return self._write(lambda con, revision: revision)
        return row[0]

    async def _notice_sweeps(self) -> None:
        self._saw_revision(await self._run(self._poll_sync))

    def _get_prefix_sync(self, prefix: str) -> tuple[int, list[KeyValue]]:
        self._poll_sync()
        con = self._connection()
        where, params = _range(prefix)
        con.execute("BEGIN")
        try:
            revision = con.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]
            rows = con.execute(f"SELECT key, value, mod_revision, lease FROM kv WHERE {where} ORDER BY key", params).fetchall()
        finally:
            con.execute("COMMIT")
        return revision, [KeyValue(k, bytes(v), r, lease) for k, v, r, lease in rows]

    async def get_prefix(self, prefix: str) -> tuple[int, list[KeyValue]]:
        revision, kvs = await self._run(self._get_prefix_sync, prefix)
        self._saw_revision(revision)
        return revision, kvs

    def _read_log_sync(self, prefix: str, after: int) -> tuple[int, list[WatchBatch], bool]:
        """`(revision read up to, batches, more)`; a snapshot batch if `after` is compacted."""
        con = self._connection()
        where, params = _range(prefix)
        con.execute("BEGIN")
        try:
            current, compacted = con.execute(
                "SELECT (SELECT value FROM meta WHERE name = 'revision'), (SELECT value FROM meta WHERE name = 'compact_revision')"
            ).fetchone()
            if after < compacted:
                rows = con.execute(f"SELECT key, value, mod_revision, lease FROM kv WHERE {where} ORDER BY key", params).fetchall()
                snapshot = tuple(KeyValue(k, bytes(v), r, lease) for k, v, r, lease in rows)
                return current, [WatchBatch(revision=current, snapshot=snapshot)], False
            upto = min(current, after + CHUNK_REVISIONS)
            rows = con.execute(
                f"SELECT revision, deleted, key, value FROM changes WHERE revision > ? AND revision <= ? AND {where} "
                "ORDER BY revision, seq",
                (after, upto, *params),
            ).fetchall()
        finally:
            con.execute("COMMIT")
        batches: list[WatchBatch] = []
        events: list[WatchEvent] = []
        for revision, deleted, key, value in rows:
            if events and events[-1].revision != revision:
                batches.append(WatchBatch(revision=events[-1].revision, events=tuple(events)))
                events = []
            events.append(WatchEvent("delete" if deleted else "put", key, bytes(value), revision))
        if events:
            batches.append(WatchBatch(revision=events[-1].revision, events=tuple(events)))
        return upto, batches, upto < current

    async def watch(self, prefix: str, from_revision: int) -> AsyncIterator[WatchBatch]:
        last = from_revision
        while True:
            upto, batches, more = await self._run(self._read_log_sync, prefix, last)
            self._saw_revision(upto)
            for batch in batches:
                yield batch
            last = max(last, upto)
            if not more:
                await self._wait_beyond(last)

    async def _wait_beyond(self, revision: int) -> None:
        """Return once the file's revision is past `revision`: one poller, every other waiter on its event."""
        while self._known_revision <= revision:
            if self._polling:
                await self._revision_changed.wait()
                continue
            self._polling = True
            try:
                while self._known_revision <= revision:
                    await trio.sleep(self.poll_interval_s)
                    await self._notice_sweeps()
            finally:
                self._polling = False
                self._wake()  # if this poller was cancelled, another waiter takes over

    async def status(self) -> BackendStatus:
        try:
            revision, (keys, leases, compacted) = await self._run(self._status_sync)
        except RegistryUnavailable as exc:
            return BackendStatus(self.kind, self.address, 0, False, exc.reason)
        return BackendStatus(
            self.kind, self.address, revision, True, f"{keys} keys, {leases} leases, history from revision {compacted}"
        )

    def _status_sync(self) -> tuple[int, tuple[int, int, int]]:
        revision = self._poll_sync()
        row = self._connection().execute(
            "SELECT (SELECT count(*) FROM kv), (SELECT count(*) FROM leases), "
            "(SELECT value FROM meta WHERE name = 'compact_revision')"
        ).fetchone()
        return revision, row


@contextlib.asynccontextmanager
async def open_sqlite_backend(path: str, **kwargs: Any) -> AsyncIterator[SqliteBackend]:
    """Open (creating if needed) the registry file at `path`; `RegistryUnavailable` if it cannot be used."""
    backend = SqliteBackend(path, **kwargs)
    await backend.open()
    try:
        yield backend
    finally:
        with trio.CancelScope(shield=True):
            await backend.aclose()
