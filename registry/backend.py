"""The backend interface every registry store implements (sqlite, etcd, consul, and the fake).

A backend is a revisioned key-value store with transactions, prefix reads, watches and
leases: the shape etcd's v3 API has, which sqlite and consul are adapted to. Keys are str
(`/isthmus/<cluster>/...`), values bytes. Revisions only grow; every committed transaction
gets exactly one new revision, shared by all of its writes.

Watches: `watch(prefix, from_revision)` yields `WatchBatch`es in revision order, starting
with changes *after* `from_revision`. If the backend has compacted past that revision it
does not fail: it yields one batch with `snapshot` set (every live key under the prefix at
the current revision) and then carries on with changes.

`registry.testing.check_backend(make_backend)` is the one conformance suite every
implementation must pass; its docstring lists exactly what each check expects.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence

import attrs

from registry.errors import RegistryError


@attrs.frozen
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    lease: int = 0


@attrs.frozen
class Put:
    key: str
    value: bytes
    lease: int = 0


@attrs.frozen
class Delete:
    key: str
    prefix: bool = False


@attrs.frozen
class Compare:
    """Txn guard: the key's mod_revision must equal `mod_revision` (0 means: the key must not exist)."""

    key: str
    mod_revision: int


@attrs.frozen
class WatchEvent:
    kind: str  # "put" | "delete"
    key: str
    value: bytes
    revision: int


@attrs.frozen
class WatchBatch:
    revision: int
    events: tuple[WatchEvent, ...] = ()
    snapshot: tuple[KeyValue, ...] | None = None  # set when the watch resumed past a compaction


@attrs.frozen
class BackendStatus:
    backend: str  # "sqlite" | "etcd" | "consul" | "fake"
    address: str
    revision: int
    reachable: bool
    detail: str = ""


class Backend(abc.ABC):
    """Async (trio) revisioned key-value store. Implementations raise `RegistryUnavailable` when unreachable."""

    kind: str = "abstract"
    address: str = ""

    @abc.abstractmethod
    async def txn(
        self,
        ops: Sequence[Put | Delete],
        compare: Sequence[Compare] = (),
    ) -> int:
        """Apply all `ops` atomically if every `compare` holds; returns the new revision.

        Raises `Conflict` when a compare fails (nothing is written).
        """

    @abc.abstractmethod
    async def get_prefix(self, prefix: str) -> tuple[int, list[KeyValue]]:
        """Every live key under `prefix`, with the revision the read was taken at."""

    @abc.abstractmethod
    def watch(self, prefix: str, from_revision: int) -> AsyncIterator[WatchBatch]:
        """Changes under `prefix` after `from_revision` (see the module docstring)."""

    @abc.abstractmethod
    async def grant_lease(self, ttl_s: float) -> int:
        """A lease id; keys put with it vanish `ttl_s` after the last keepalive."""

    @abc.abstractmethod
    async def keepalive(self, lease: int) -> None:
        """Refresh a lease. Raises `RegistryError` if it has already expired."""

    @abc.abstractmethod
    async def revoke(self, lease: int) -> None:
        """End a lease now, deleting its keys."""

    @abc.abstractmethod
    async def status(self) -> BackendStatus:
        """Never raises for an unreachable backend: reports `reachable=False`."""

    async def compact(self, revision: int) -> None:
        """Forget history up to `revision` (watches from before it resume with a snapshot).

        Optional: backends without history compaction raise `RegistryError`.
        """
        raise RegistryError(f"{self.kind} registry at {self.address or '?'}: compaction is not supported")

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files."""
