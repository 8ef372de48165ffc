"""Catalog sync with one peer: the import state machine (pure) and its trio shell.

One `PeerSync` per remote cluster (Cilium's habit: one object per remote, and "initial sync
complete" before a remote catalog is trusted). States and transitions, as data
(`TRANSITIONS`); a `(state, event)` pair not in the table raises `SyncError`::

    connecting --connected--> syncing --snapshot--> synced <--delta/snapshot/heartbeat--+
        ^                        |                     |                                |
        +------disconnected------+                     +--disconnected--> stale --connected--> resuming
                                                                            ^                     |
                                                                            +---disconnected------+

- `connecting`/`syncing`: nothing of this peer is trusted yet; its imports are not served.
- `synced`: the initial snapshot was accepted; deltas apply on top, in revision order.
- `stale`: the link is down. The imports are kept and still served (static stability), and
  `staleness(now)` says for how long they have not been confirmed.
- `resuming`: reconnected, asking for the changes after the last applied revision. The peer
  answers with deltas, or with a snapshot when it cannot resume from that revision (restart,
  compaction): the snapshot then replaces the view in one step, so no endpoint is withdrawn
  before its replacement is known. `Resynced` reports what that replacement changed.

Pure: takes `now` (trio's clock in the shell) and never imports trio. The shell that connects,
streams, applies and backs off is `federation.peer_import`.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping

import attrs

from federation.errors import FederationError
from federation.imports import ExportView, MessageRefused, PeerContext, Refusal, accept_delta, accept_snapshot


class SyncState(enum.Enum):
    CONNECTING = "connecting"
    SYNCING = "syncing"
    SYNCED = "synced"
    STALE = "stale"
    RESUMING = "resuming"


class SyncError(FederationError):
    """An event that the sync state machine does not accept in its current state."""


S = SyncState
TRANSITIONS: Mapping[tuple[SyncState, str], SyncState] = {
    (S.CONNECTING, "connected"): S.SYNCING,
    (S.CONNECTING, "disconnected"): S.CONNECTING,
    (S.SYNCING, "snapshot"): S.SYNCED,
    (S.SYNCING, "heartbeat"): S.SYNCING,
    (S.SYNCING, "disconnected"): S.CONNECTING,
    (S.SYNCED, "snapshot"): S.SYNCED,
    (S.SYNCED, "delta"): S.SYNCED,
    (S.SYNCED, "heartbeat"): S.SYNCED,
    (S.SYNCED, "disconnected"): S.STALE,
    (S.STALE, "connected"): S.RESUMING,
    (S.STALE, "disconnected"): S.STALE,
    (S.RESUMING, "snapshot"): S.SYNCED,
    (S.RESUMING, "delta"): S.SYNCED,
    (S.RESUMING, "heartbeat"): S.SYNCED,
    (S.RESUMING, "disconnected"): S.STALE,
}


@attrs.frozen
class Resynced:
    """A snapshot replaced a view we already held: what it added, removed and changed."""

    peer: str
    from_revision: int
    to_revision: int
    added: int
    removed: int
    changed: int


@attrs.frozen
class PeerSync:
    """Everything known about the import from one peer."""

    ctx: PeerContext
    state: SyncState = SyncState.CONNECTING
    view: ExportView | None = None
    initial_sync_complete: bool = False
    last_sync_at: float | None = None
    stale_since: float | None = None
    connected_at: float | None = None
    refused: Mapping[str, int] = attrs.field(factory=dict)
    last_error: str = ""
    connects: int = 0
    rtt_s: float | None = None

    @property
    def peer(self) -> str:
        return self.ctx.peer

    @property
    def revision(self) -> int | None:
        return None if self.view is None else self.view.revision

    def watch_from(self) -> int:
        """The revision to resume from (0: send a snapshot)."""
        return 0 if self.view is None else self.view.revision

    def trusted_view(self) -> ExportView | None:
        """The view gateways may be given: only after the initial sync completed (also while stale)."""
        return self.view if self.initial_sync_complete else None

    def staleness(self, now: float) -> float | None:
        return None if self.stale_since is None else max(0.0, now - self.stale_since)

    def refused_total(self) -> int:
        return sum(self.refused.values())


def _next(sync: PeerSync, event: str) -> SyncState:
    try:
        return TRANSITIONS[(sync.state, event)]
    except KeyError:
        raise SyncError(f"peer {sync.peer}: event {event!r} is not valid in state {sync.state.value}") from None


def connected(sync: PeerSync, *, now: float) -> PeerSync:
    return attrs.evolve(sync, state=_next(sync, "connected"), connected_at=now, connects=sync.connects + 1, last_error="")


def disconnected(sync: PeerSync, *, now: float, error: str = "") -> PeerSync:
    state = _next(sync, "disconnected")
    stale_since = sync.stale_since
    if state is SyncState.STALE and stale_since is None:
        stale_since = now
    return attrs.evolve(sync, state=state, stale_since=stale_since, last_error=error or sync.last_error, connected_at=None)


def _count(refused: Mapping[str, int], refusals: list[Refusal]) -> dict[str, int]:
    out = dict(refused)
    for r in refusals:
        out[r.reason] = out.get(r.reason, 0) + 1
    return out


@attrs.frozen
class Applied:
    """What one message did: whether the trusted view changed, what was refused, a resync report."""

    changed: bool
    refusals: tuple[Refusal, ...] = ()
    resynced: Resynced | None = None


def on_message(sync: PeerSync, data: object, *, sender: str | None, now: float) -> tuple[PeerSync, Applied]:
    """Apply one stream message (`snapshot`, `delta` or `heartbeat`) from the peer."""
    kind = data.get("type") if isinstance(data, Mapping) else None
    if kind not in ("snapshot", "delta", "heartbeat"):
        refusal = Refusal(sync.peer, "malformed", "message", f"unknown message type {kind!r}")
        return attrs.evolve(sync, refused=_count(sync.refused, [refusal])), Applied(False, (refusal,))
    if kind == "delta" and sync.view is None:
        refusal = Refusal(sync.peer, "no-snapshot", "delta", "a delta arrived before any snapshot")
        return attrs.evolve(sync, refused=_count(sync.refused, [refusal])), Applied(False, (refusal,))
    state = _next(sync, kind)
    if kind == "heartbeat":
        if sync.state is SyncState.RESUMING:
            # Nothing changed while we were away: the held view is confirmed as is.
            return attrs.evolve(sync, state=state, stale_since=None, last_sync_at=now), Applied(False)
        return attrs.evolve(sync, state=state, last_sync_at=now if sync.initial_sync_complete else sync.last_sync_at), Applied(False)
    try:
        if kind == "snapshot":
            view, refusals = accept_snapshot(sync.ctx, data, sender=sender)
        else:
            assert sync.view is not None
            view, refusals = accept_delta(sync.ctx, sync.view, data, sender=sender)
    except MessageRefused as exc:
        refusal = exc.refusal
        return attrs.evolve(sync, refused=_count(sync.refused, [refusal])), Applied(False, (refusal,))
    resynced = None
    if kind == "snapshot" and sync.view is not None:
        old, new = sync.view.endpoints, view.endpoints
        resynced = Resynced(
            peer=sync.peer,
            from_revision=sync.view.revision,
            to_revision=view.revision,
            added=sum(1 for i in new if i not in old),
            removed=sum(1 for i in old if i not in new),
            changed=sum(1 for i, e in new.items() if i in old and old[i] != e),
        )
    changed = sync.view is None or not sync.initial_sync_complete or _differs(sync.view, view)
    new_sync = attrs.evolve(
        sync,
        state=state,
        view=view,
        initial_sync_complete=True,
        last_sync_at=now,
        stale_since=None,
        refused=_count(sync.refused, refusals),
    )
    return new_sync, Applied(changed, tuple(refusals), resynced)


def _differs(a: ExportView, b: ExportView) -> bool:
    return a.services != b.services or a.endpoints != b.endpoints or a.exports != b.exports


def reconnect_delay(attempt: int, rng: random.Random, *, base_s: float = 0.1, cap_s: float = 10.0) -> float:
    """Capped exponential backoff with "equal jitter": between half and all of min(cap, base*2^n)."""
    ceiling = min(cap_s, base_s * (2 ** min(attempt, 30)))
    return ceiling / 2 + rng.random() * ceiling / 2
