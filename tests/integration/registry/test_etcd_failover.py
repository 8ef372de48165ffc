"""etcd backend faults a user would notice: a leader killed mid-watch, a member dying while
the history a watch needs is compacted, and an etcd that is not there at all."""

from __future__ import annotations

import contextlib

import trio

from registry.backend import Put, WatchBatch
from registry.errors import RegistryUnavailable
from registry.etcd import EtcdBackend
from tests.conftest import free_port
from tests.integration.registry.conftest import needs_etcd

P = "/isthmus/east-1/endpoints/echo.demo/"


class _Batches:
    """A watch running in the background; `wait_for` wakes on each batch, with a deadline."""

    def __init__(self) -> None:
        self.batches: list[WatchBatch] = []
        self._arrived = trio.Event()

    async def run(self, backend: EtcdBackend, from_revision: int, *, task_status) -> None:
        async with contextlib.aclosing(backend.watch(P, from_revision)) as batches:
            task_status.started()
            async for batch in batches:
                self.batches.append(batch)
                self._arrived.set()
                self._arrived = trio.Event()

    async def wait_for(self, predicate, timeout_s: float = 10.0) -> None:
        with trio.fail_after(timeout_s):
            while not predicate(self.batches):
                await self._arrived.wait()


@needs_etcd
async def test_watch_on_the_leader_survives_its_kill_without_gap_or_duplicate(etcd_three):
    leader = await etcd_three.leader()
    # The leader first: requests and the watch start on it and must move when it dies.
    others = [m.client_url for m in etcd_three.members if m is not leader]
    backend = EtcdBackend([leader.client_url, *others])
    try:
        start, _ = await backend.get_prefix(P)
        watch = _Batches()
        async with trio.open_nursery() as nursery:
            await nursery.start(watch.run, backend, start)
            written = [await backend.txn([Put(P + f"e{i}", b"up")]) for i in range(5)]
            await watch.wait_for(lambda got: len(got) == 5)
            await leader.kill()
            # Writes go on through the surviving members while they elect a new leader.
            written += [await backend.txn([Put(P + f"e{i}", b"up")]) for i in range(5, 10)]
            await watch.wait_for(lambda got: got[-1].revision >= written[-1])
            nursery.cancel_scope.cancel()
        batches = watch.batches
        assert [b.revision for b in batches] == written
        assert [e.key for b in batches for e in b.events] == [P + f"e{i}" for i in range(10)]
        assert (await etcd_three.leader()) is not leader
        status = await backend.status()
        assert status.reachable and status.revision == written[-1]
    finally:
        await backend.aclose()


@needs_etcd
async def test_watch_whose_history_was_compacted_while_its_member_was_down_resumes_with_a_snapshot(
    etcd_three,
):
    leader = await etcd_three.leader()
    follower = next(m for m in etcd_three.members if m is not leader)
    others = [m.client_url for m in etcd_three.members if m not in (leader, follower)]
    watch_backend = EtcdBackend([follower.client_url, leader.client_url, *others])
    writer = EtcdBackend([leader.client_url, *others])
    try:
        first = await writer.txn([Put(P + "a", b"1")])
        async with contextlib.aclosing(watch_backend.watch(P, first - 1)) as batches:
            batch = await batches.__anext__()
            assert [e.key for e in batch.events] == [P + "a"]
            # While the watcher is not reading: its member dies, history moves on and is compacted.
            await follower.kill()
            await writer.txn([Put(P + "b", b"2")])
            compacted_at = await writer.txn([Put(P + "a", b"3")])
            await writer.compact(compacted_at)
            later = await writer.txn([Put(P + "c", b"4")])
            with trio.fail_after(10):
                snapshot_batch = await batches.__anext__()
                assert snapshot_batch.snapshot is not None
                assert [(kv.key, kv.value) for kv in snapshot_batch.snapshot] == [
                    (P + "a", b"3"),
                    (P + "b", b"2"),
                ]
                assert snapshot_batch.revision == compacted_at
                after = await batches.__anext__()
            assert after.revision == later and [e.key for e in after.events] == [P + "c"]
    finally:
        await watch_backend.aclose()
        await writer.aclose()


async def test_unreachable_etcd_is_reported_at_once_with_address_and_hint():
    address = f"127.0.0.1:{free_port()}"
    backend = EtcdBackend([address])
    try:
        with trio.fail_after(2):
            try:
                await backend.get_prefix(P)
            except RegistryUnavailable as exc:
                error = exc
            else:
                raise AssertionError("a read from a closed port succeeded")
            status = await backend.status()
        assert error.address == address
        assert "\n" not in str(error) and address in str(error) and "etcd running" in str(error)
        assert not status.reachable and status.backend == "etcd" and address in status.detail
    finally:
        await backend.aclose()


async def test_watch_on_an_unreachable_etcd_gives_up_within_its_timeout():
    address = f"127.0.0.1:{free_port()}"
    backend = EtcdBackend([address], request_timeout_s=1.0)
    try:
        with trio.fail_after(3):
            try:
                async with contextlib.aclosing(backend.watch(P, 0)) as batches:
                    async for _ in batches:
                        raise AssertionError("a watch on a closed port yielded")
            except RegistryUnavailable as exc:
                assert exc.address == address
            else:
                raise AssertionError("a watch on a closed port ended quietly")
    finally:
        await backend.aclose()


@needs_etcd
async def test_writes_fail_fast_once_the_only_member_is_killed(etcd_one):
    backend = EtcdBackend(etcd_one.client_urls)
    try:
        await backend.txn([Put(P + "a", b"1")])
        await etcd_one.members[0].kill()
        with trio.fail_after(2):
            try:
                await backend.txn([Put(P + "a", b"2")])
            except RegistryUnavailable as exc:
                assert etcd_one.members[0].client_url.removeprefix("http://") in str(exc)
            else:
                raise AssertionError("a write to a killed etcd succeeded")
    finally:
        await backend.aclose()
