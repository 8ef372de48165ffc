"""The per-peer import state machine: trust after initial sync, stale with age, resume without loss."""

from __future__ import annotations

import random
from contextlib import asynccontextmanager

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from federation import sync as sync_mod
from federation.imports import PeerContext, check_consistency, export_view, view_delta, view_to_json
from federation.peer_import import PeerImport, Stream, StreamBroken
from federation.sync import TRANSITIONS, PeerSync, SyncError, SyncState, connected, disconnected, on_message
from registry.model import Catalog, Endpoint, Export, Locality, Peer, Service

WEST = Locality("eu-west", "eu-west-1a")
WEST_ID = "spiffe://mesh.example/cluster/west-1/gateway"
CTX = PeerContext.of(
    Peer(name="west-1", region="eu-west", zones=("eu-west-1a",), gateway="127.0.3.1:15443"),
    local="east-1",
    trust_domain="mesh.example",
)


def west(revision, addresses):
    eps = [Endpoint("echo.demo", "west-1", a, 8080, WEST) for a in addresses]
    return Catalog(
        "west-1", revision, {"echo.demo": Service.from_key("echo.demo")}, {e.id: e for e in eps},
        {"echo.demo": Export("echo.demo", ("*",))},
    )  # fmt: skip


def snapshot(revision, addresses):
    return view_to_json(export_view(west(revision, addresses), "east-1"))


def test_nothing_is_trusted_before_the_initial_sync_completes():
    s = connected(PeerSync(CTX), now=0)
    assert s.state is SyncState.SYNCING and s.trusted_view() is None
    s, applied = on_message(s, {"type": "heartbeat", "cluster": "west-1", "revision": 1}, sender=WEST_ID, now=1)
    assert s.trusted_view() is None and not applied.changed
    s, applied = on_message(s, snapshot(5, ["127.0.3.10"]), sender=WEST_ID, now=2)
    assert s.state is SyncState.SYNCED and applied.changed
    assert s.trusted_view().revision == 5 and s.last_sync_at == 2


def test_a_lost_link_keeps_imports_and_marks_them_stale_with_age():
    s = connected(PeerSync(CTX), now=0)
    s, _ = on_message(s, snapshot(5, ["127.0.3.10"]), sender=WEST_ID, now=1)
    s = disconnected(s, now=10, error="connection refused")
    assert s.state is SyncState.STALE
    assert len(s.trusted_view().endpoints) == 1
    assert s.staleness(now=40) == 30 and s.last_error == "connection refused"
    s = disconnected(connected(s, now=50), now=60)  # a failed resume does not reset the age
    assert s.staleness(now=70) == 60


def test_resume_asks_for_changes_after_the_last_revision_and_clears_staleness():
    s = connected(PeerSync(CTX), now=0)
    assert s.watch_from() == 0
    s, _ = on_message(s, snapshot(5, ["127.0.3.10"]), sender=WEST_ID, now=1)
    s = connected(disconnected(s, now=2), now=3)
    assert s.state is SyncState.RESUMING and s.watch_from() == 5
    delta = view_delta(export_view(west(5, ["127.0.3.10"]), "east-1"), export_view(west(6, ["127.0.3.11"]), "east-1"))
    s, applied = on_message(s, delta, sender=WEST_ID, now=4)
    assert s.state is SyncState.SYNCED and s.staleness(now=5) is None
    assert [e.address for e in s.view.endpoints.values()] == ["127.0.3.11"]


def test_a_snapshot_on_resume_replaces_the_view_and_reports_the_resync():
    s = connected(PeerSync(CTX), now=0)
    s, _ = on_message(s, snapshot(5, ["127.0.3.10", "127.0.3.11"]), sender=WEST_ID, now=1)
    s = connected(disconnected(s, now=2), now=3)
    s, applied = on_message(s, snapshot(9, ["127.0.3.11", "127.0.3.12"]), sender=WEST_ID, now=4)
    r = applied.resynced
    assert (r.from_revision, r.to_revision, r.added, r.removed, r.changed) == (5, 9, 1, 1, 0)
    assert check_consistency(s.view.endpoints.values(), export_view(west(9, ["127.0.3.11", "127.0.3.12"]), "east-1").endpoints.values()).ok


def test_refusals_are_counted_by_reason_and_leave_the_view_alone():
    s = connected(PeerSync(CTX), now=0)
    s, _ = on_message(s, snapshot(5, ["127.0.3.10"]), sender=WEST_ID, now=1)
    before = s.view
    s, applied = on_message(s, snapshot(6, []), sender="spiffe://mesh.example/cluster/east-2/gateway", now=2)
    s, _ = on_message(s, {"type": "gossip"}, sender=WEST_ID, now=3)
    assert s.view is before
    assert s.refused == {"identity-mismatch": 1, "malformed": 1} and s.refused_total() == 2


def test_a_delta_before_any_snapshot_is_refused():
    s = connected(PeerSync(CTX), now=0)
    s, applied = on_message(s, {"type": "delta", "cluster": "west-1", "revision": 3}, sender=WEST_ID, now=1)
    assert applied.refusals[0].reason == "no-snapshot" and s.view is None


EVENTS = ("connected", "disconnected", "snapshot", "delta", "heartbeat")


@given(st.sampled_from(list(SyncState)), st.sampled_from(EVENTS))
def test_every_state_event_pair_is_in_the_table_or_raises(state, event):
    s = PeerSync(CTX, state=state)
    if (state, event) in TRANSITIONS:
        assert sync_mod._next(s, event) is TRANSITIONS[(state, event)]
    else:
        with pytest.raises(SyncError, match=f"event '{event}' is not valid in state {state.value}"):
            sync_mod._next(s, event)


def test_backoff_is_capped_and_jittered():
    rng = random.Random(7)
    delays = [sync_mod.reconnect_delay(n, rng) for n in range(12)]
    assert 0.05 <= delays[0] <= 0.1
    assert all(5.0 <= d <= 10.0 for d in delays[8:])


class FakeExporter:
    """west-1's side of the stream: snapshot or deltas from a revision, heartbeats, and partitions."""

    def __init__(self):
        self.catalogs = {1: west(1, ["127.0.3.10", "127.0.3.11"])}
        self.up = True
        self.opened_from = []
        self.changed = trio.Event()

    @property
    def current(self):
        return self.catalogs[max(self.catalogs)]

    def change(self, addresses):
        rev = max(self.catalogs) + 1
        self.catalogs[rev] = west(rev, addresses)
        self.changed.set()
        self.changed = trio.Event()

    @asynccontextmanager
    async def open_stream(self, from_revision):
        self.opened_from.append(from_revision)
        if not self.up:
            raise StreamBroken("connect to 127.0.3.1:15443: connection refused")

        async def messages():
            sent = from_revision
            if from_revision not in self.catalogs:
                yield snapshot(self.current.revision, [e.address for e in self.current.endpoints.values()])
                sent = self.current.revision
            while self.up:
                for rev in sorted(r for r in self.catalogs if r > sent):
                    d = view_delta(export_view(self.catalogs[sent], "east-1"), export_view(self.catalogs[rev], "east-1"))
                    if d is not None:
                        yield d
                    sent = rev
                yield {"type": "heartbeat", "cluster": "west-1", "revision": sent}
                with trio.move_on_after(5):
                    await self.changed.wait()
            raise StreamBroken("connection reset by peer")

        yield Stream(WEST_ID, messages())


async def wait_for(predicate, within_s=60):
    with trio.fail_after(within_s):
        while not predicate():  # noqa: ASYNC110 - polling state with a deadline
            await trio.sleep(0.01)


async def test_partition_keeps_imports_stale_then_resumes_without_loss(autojump_clock):
    exporter = FakeExporter()
    changes = []
    imp = PeerImport(CTX, exporter.open_stream, on_change=lambda p: changes.append(p.sync.state), rng=random.Random(1))
    async with trio.open_nursery() as nursery:
        await nursery.start(imp.serve)
        await wait_for(lambda: imp.sync.state is SyncState.SYNCED)
        assert len(imp.sync.trusted_view().endpoints) == 2
        exporter.up = False
        exporter.change(["127.0.3.11", "127.0.3.12"])  # changes while the link is down
        await wait_for(lambda: imp.sync.state is SyncState.STALE)
        lost_at = trio.current_time()
        await trio.sleep(30)
        assert imp.sync.staleness(trio.current_time()) == pytest.approx(30, abs=0.5)
        assert len(imp.sync.trusted_view().endpoints) == 2  # kept while the peer is gone
        exporter.change(["127.0.3.12", "127.0.3.13", "127.0.3.14"])
        exporter.up = True
        await wait_for(lambda: imp.sync.state is SyncState.SYNCED)
        assert trio.current_time() - lost_at < 45  # backoff is capped at 10 s
        assert exporter.opened_from[-1] == 1  # resumed from the last revision it had applied
        await wait_for(lambda: imp.sync.revision == exporter.current.revision)
        report = check_consistency(
            imp.sync.view.endpoints.values(), export_view(exporter.current, "east-1").endpoints.values()
        )
        assert report.ok, report
        assert imp.sync.staleness(trio.current_time()) is None
        nursery.cancel_scope.cancel()
    assert SyncState.STALE in changes


async def test_a_silent_peer_is_marked_stale_after_the_idle_timeout(autojump_clock):
    @asynccontextmanager
    async def silent(from_revision):
        async def messages():
            yield snapshot(3, ["127.0.3.10"])
            await trio.sleep_forever()
            yield None  # pragma: no cover

        yield Stream(WEST_ID, messages())

    imp = PeerImport(CTX, silent, idle_timeout_s=15, rng=random.Random(2))
    async with trio.open_nursery() as nursery:
        await nursery.start(imp.serve)
        await wait_for(lambda: imp.sync.state is SyncState.SYNCED)
        start = trio.current_time()
        await wait_for(lambda: imp.sync.state is SyncState.STALE)
        assert trio.current_time() - start == pytest.approx(15, abs=0.1)
        assert imp.sync.last_error == "no message for 15 s"
        nursery.cancel_scope.cancel()


async def test_a_peer_seen_answering_again_is_reconnected_at_once(autojump_clock):
    exporter = FakeExporter()
    exporter.up = False  # e.g. its gateway is not up yet: the import backs off
    imp = PeerImport(CTX, exporter.open_stream, rng=random.Random(3))
    async with trio.open_nursery() as nursery:
        await nursery.start(imp.serve)
        await wait_for(lambda: len(exporter.opened_from) >= 7)  # the backoff has grown to seconds
        exporter.up = True
        woken_at = trio.current_time()
        imp.wake()  # a probe answered
        await wait_for(lambda: imp.sync.state is SyncState.SYNCED)
        assert trio.current_time() - woken_at < 0.01
        nursery.cancel_scope.cancel()
