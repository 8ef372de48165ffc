"""Several processes share one sqlite registry file: atomic writes, one revision order, watches across processes."""

from __future__ import annotations

import sys
import textwrap
from contextlib import aclosing

import trio

from registry.backend import Compare, Put
from registry.errors import RegistryUnavailable
from registry.sqlite import open_sqlite_backend

WRITER = textwrap.dedent(
    """
    import sys, trio
    from registry.backend import Compare, Put
    from registry.errors import Conflict
    from registry.sqlite import open_sqlite_backend

    async def main(path, name, count):
        async with open_sqlite_backend(path) as b:
            for i in range(count):
                while True:  # read-modify-write of a shared counter, guarded by its mod_revision
                    _, kvs = await b.get_prefix("/mp/counter")
                    value, rev = (int(kvs[0].value), kvs[0].mod_revision) if kvs else (0, 0)
                    try:
                        await b.txn([Put("/mp/counter", str(value + 1).encode()), Put(f"/mp/{name}/{i}", b"x")],
                                    [Compare("/mp/counter", rev)])
                        break
                    except Conflict:
                        continue

    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
    """
)


async def test_two_processes_writing_one_file(tmp_path):
    path = str(tmp_path / "shared.db")
    count = 60
    async with open_sqlite_backend(path) as backend:
        start, _ = await backend.get_prefix("/mp/")
        seen = []
        async with trio.open_nursery() as nursery:

            async def follow():
                async with aclosing(backend.watch("/mp/", start)) as batches:
                    async for batch in batches:
                        seen.extend(batch.events)
                        if sum(e.key == "/mp/counter" for e in seen) == 2 * count:
                            return

            nursery.start_soon(follow)
            procs = [
                await trio.lowlevel.open_process([sys.executable, "-c", WRITER, path, name, str(count)])
                for name in ("a", "b")
            ]
            with trio.fail_after(60):
                for proc in procs:
                    assert await proc.wait() == 0
        revision, kvs = await backend.get_prefix("/mp/")
    values = {kv.key: kv.value for kv in kvs}
    assert values["/mp/counter"] == str(2 * count).encode()  # no lost update across processes
    assert len(values) == 2 * count + 1
    assert revision == start + 2 * count  # one revision per transaction, none shared or skipped
    counter_values = [int(e.value) for e in seen if e.key == "/mp/counter"]
    assert counter_values == list(range(1, 2 * count + 1))  # the watcher saw every write, in order


async def test_a_write_from_another_process_reaches_a_watcher_quickly(tmp_path):
    path = str(tmp_path / "shared.db")
    async with open_sqlite_backend(path) as backend:
        start = await backend.txn([Put("/w/ready", b"1")])
        async with aclosing(backend.watch("/w/", start)) as batches:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-c", WRITER.replace("/mp/", "/w/"), path, "other", "1"],
            )
            with trio.fail_after(30):
                async for batch in batches:
                    assert batch.events[0].key in ("/w/counter", "/w/other/0")
                    break
                assert await proc.wait() == 0


async def test_a_file_that_is_not_a_registry(tmp_path):
    path = tmp_path / "not.db"
    path.write_bytes(b"this is not sqlite" * 100)
    try:
        async with open_sqlite_backend(str(path)):
            raise AssertionError("opened a file that is not a database")
    except RegistryUnavailable as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)


async def test_an_unwritable_place_is_unavailable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    try:
        async with open_sqlite_backend(str(blocker / "registry.db")):
            raise AssertionError("opened a registry under a regular file")
    except RegistryUnavailable as exc:
        assert "registry at" in str(exc) and "unavailable" in str(exc)


async def test_compare_against_a_stale_revision_fails_across_connections(tmp_path):
    path = str(tmp_path / "shared.db")
    async with open_sqlite_backend(path) as one, open_sqlite_backend(path) as two:
        rev = await one.txn([Put("/k", b"1")])
        await two.txn([Put("/k", b"2")], [Compare("/k", rev)])
        from registry.errors import Conflict

        try:
            await one.txn([Put("/k", b"3")], [Compare("/k", rev)])
        except Conflict:
            pass
        else:
            raise AssertionError("a stale compare succeeded")
        assert [kv.value for kv in (await one.get_prefix("/k"))[1]] == [b"2"]
