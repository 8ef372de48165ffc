"""The consul backend against a loopback HTTP server that replays Consul's documented answers.

No Consul agent can be installed here, so these tests check each request the backend
sends (method, path, query, JSON body) against Consul's HTTP API documentation for
`/v1/kv`, `/v1/txn`, `/v1/session`, `/v1/status/leader` and blocking queries, and answer
with the documentation's sample responses.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import h11
import pytest
import trio

from registry.backend import Compare, Delete, Put, WatchBatch
from registry.consul import ConsulBackend, session_to_lease
from registry.errors import Conflict, LeaseExpired, RegistryUnavailable
from tests.conftest import free_port

SESSION = "adf4238a-882b-9ddc-4a9d-5b6758e4159e"
LEASE = session_to_lease(SESSION)
SESSION_INFO = [
    {
        "ID": SESSION,
        "Name": "isthmus",
        "Node": "raja-laptop-02",
        "LockDelay": 0,
        "Behavior": "delete",
        "TTL": "10s",
        "NodeChecks": ["serfHealth"],
        "ServiceChecks": None,
        "CreateIndex": 1086449,
        "ModifyIndex": 1086449,
    }
]


def entry(key: str, value: str | None, index: int, session: str | None = None) -> dict[str, Any]:
    """One KV entry as `GET /v1/kv/<key>?recurse` documents it (Value base64 of `value`)."""
    import base64

    doc = {
        "CreateIndex": index,
        "ModifyIndex": index,
        "LockIndex": 0,
        "Key": key,
        "Flags": 0,
        "Value": None if value is None else base64.b64encode(value.encode()).decode(),
    }
    if session:
        doc["Session"] = session
    return doc


@attrs.frozen
class Reply:
    status: int = 200
    body: Any = None
    index: int | None = None  # X-Consul-Index


@attrs.frozen
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


@attrs.define
class ReplayServer:
    """Answers the n-th request with the n-th scripted `Reply`; holds requests past the script."""

    replies: list[Reply]
    seen: list[Seen] = attrs.Factory(list)
    port: int = 0

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            while True:
                request, body = None, b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:
                        return  # closed
                target = urlsplit(request.target.decode())
                self.seen.append(
                    Seen(
                        request.method.decode(),
                        target.path,
                        parse_qs(target.query, keep_blank_values=True),
                        json.loads(body) if body else None,
                    )
                )
                if len(self.seen) > len(self.replies):
                    await trio.sleep_forever()  # like a blocking query that never returns
                reply = self.replies[len(self.seen) - 1]
                payload = json.dumps(reply.body).encode() if reply.body is not None else b""
                headers = [("content-type", "application/json"), ("content-length", str(len(payload)))]
                if reply.index is not None:
                    headers.append(("x-consul-index", str(reply.index)))
                await stream.send_all(conn.send(h11.Response(status_code=reply.status, headers=headers)))
                await stream.send_all(conn.send(h11.Data(data=payload)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                conn.start_next_cycle()


@contextlib.asynccontextmanager
async def replaying(*replies: Reply) -> AsyncIterator[tuple[ReplayServer, ConsulBackend]]:
    server = ReplayServer(list(replies))
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, server._handle, 0, host="127.0.0.1")
        )
        server.port = listeners[0].socket.getsockname()[1]
        backend = ConsulBackend(f"127.0.0.1:{server.port}", request_timeout_s=2.0, wait_s=30)
        try:
            yield server, backend
        finally:
            await backend.aclose()
            nursery.cancel_scope.cancel()


async def test_prefix_read_is_a_recursive_kv_get_and_reports_the_index():
    async with replaying(
        Reply(body=[entry("isthmus/e/a", "1", 7), entry("isthmus/e/b", None, 9, SESSION)], index=9)
    ) as (server, backend):
        revision, kvs = await backend.get_prefix("/isthmus/e/")
    assert server.seen == [Seen("GET", "/v1/kv/isthmus/e/", {"recurse": [""]}, None)]
    assert revision == 9
    assert [(kv.key, kv.value, kv.mod_revision, kv.lease) for kv in kvs] == [
        ("/isthmus/e/a", b"1", 7, 0),
        ("/isthmus/e/b", b"", 9, LEASE),
    ]


async def test_prefix_read_of_nothing_is_a_404_with_an_index():
    async with replaying(Reply(status=404, index=3)) as (_, backend):
        assert await backend.get_prefix("/isthmus/none/") == (3, [])


async def test_txn_sends_compares_then_writes_and_returns_the_modify_index():
    documented = {
        "Results": [
            {
                "KV": {
                    "LockIndex": 0,
                    "Key": "isthmus/e/a",
                    "Flags": 0,
                    "Value": None,
                    "CreateIndex": 40,
                    "ModifyIndex": 41,
                }
            },
            {
                "KV": {
                    "LockIndex": 1,
                    "Key": "isthmus/e/b",
                    "Flags": 0,
                    "Value": None,
                    "CreateIndex": 41,
                    "ModifyIndex": 41,
                }
            },
        ],
        "Errors": None,
    }
    async with replaying(Reply(body=documented)) as (server, backend):
        revision = await backend.txn(
            [
                Put("/isthmus/e/a", b"1"),
                Put("/isthmus/e/b", b"2", lease=LEASE),
                Delete("/isthmus/e/old/", prefix=True),
            ],
            [Compare("/isthmus/e/a", 40)],
        )
    assert revision == 41
    (sent,) = server.seen
    assert (sent.method, sent.path, sent.query) == ("PUT", "/v1/txn", {})
    assert sent.body == [
        {"KV": {"Verb": "check-index", "Key": "isthmus/e/a", "Index": 40}},
        {"KV": {"Verb": "set", "Key": "isthmus/e/a", "Value": "MQ=="}},
        {"KV": {"Verb": "lock", "Key": "isthmus/e/b", "Value": "Mg==", "Session": SESSION}},
        {"KV": {"Verb": "delete-tree", "Key": "isthmus/e/old/"}},
    ]


async def test_rolled_back_txn_is_a_conflict():
    rolled_back = {
        "Results": None,
        "Errors": [{"OpIndex": 0, "What": 'failed to check-not-exists key "isthmus/e/a"'}],
    }
    async with replaying(Reply(status=409, body=rolled_back)) as (_, backend):
        with pytest.raises(Conflict, match="/isthmus/e/a"):
            await backend.txn([Put("/isthmus/e/a", b"1")], [Compare("/isthmus/e/a", 0)])


async def test_delete_only_txn_reads_the_kv_index_after_it():
    async with replaying(Reply(body={"Results": None, "Errors": None}), Reply(status=404, index=57)) as (
        server,
        backend,
    ):
        assert await backend.txn([Delete("/isthmus/e/a")]) == 57
    assert [(s.method, s.path, s.query) for s in server.seen] == [
        ("PUT", "/v1/txn", {}),
        ("GET", "/v1/kv/isthmus/e/a", {}),
    ]


async def test_leases_are_sessions_created_renewed_and_destroyed():
    async with replaying(
        Reply(body={"ID": SESSION}),
        Reply(body=SESSION_INFO),
        Reply(status=404, body=f"Session id '{SESSION}' not found"),
        Reply(body=True),
    ) as (server, backend):
        lease = await backend.grant_lease(2.0)
        await backend.keepalive(lease)
        with pytest.raises(LeaseExpired):
            await backend.keepalive(lease)
        await backend.revoke(lease)
    assert lease == LEASE
    assert [(s.method, s.path) for s in server.seen] == [
        ("PUT", "/v1/session/create"),
        ("PUT", f"/v1/session/renew/{SESSION}"),
        ("PUT", f"/v1/session/renew/{SESSION}"),
        ("PUT", f"/v1/session/destroy/{SESSION}"),
    ]
    assert server.seen[0].body == {"Name": "isthmus", "TTL": "10s", "Behavior": "delete", "LockDelay": "0s"}


async def test_watch_after_a_read_uses_blocking_queries_and_diffs_answers():
    async with replaying(
        Reply(body=[entry("isthmus/e/a", "1", 10), entry("isthmus/e/b", "2", 11)], index=11),  # get_prefix
        # The blocking query's answer: a deleted, b changed, c new.
        Reply(body=[entry("isthmus/e/b", "22", 14), entry("isthmus/e/c", "3", 12)], index=14),
        Reply(status=404, index=13),  # the tombstone index of isthmus/e/a
    ) as (server, backend):
        revision, _ = await backend.get_prefix("/isthmus/e/")
        batches: list[WatchBatch] = []
        with trio.fail_after(5):
            async with contextlib.aclosing(backend.watch("/isthmus/e/", revision)) as watch:
                async for batch in watch:
                    batches.append(batch)
                    if batch.revision == 14:
                        break
    assert [(b.revision, [(e.kind, e.key, e.value) for e in b.events]) for b in batches] == [
        (12, [("put", "/isthmus/e/c", b"3")]),
        (13, [("delete", "/isthmus/e/a", b"")]),
        (14, [("put", "/isthmus/e/b", b"22")]),
    ]
    blocking = server.seen[1]
    assert (blocking.method, blocking.path) == ("GET", "/v1/kv/isthmus/e/")
    assert blocking.query == {"recurse": [""], "index": ["11"], "wait": ["30s"]}
    assert (server.seen[2].path, server.seen[2].query) == ("/v1/kv/isthmus/e/a", {"recurse": [""]})


async def test_watch_from_an_unknown_revision_starts_with_a_snapshot_and_resets_when_the_index_goes_back():
    async with replaying(
        Reply(body=[entry("isthmus/e/a", "1", 10)], index=10),  # no known state at revision 5: snapshot
        Reply(body=[entry("isthmus/e/b", "2", 4)], index=4),  # index went backwards (a restored snapshot)
    ) as (server, backend):
        batches: list[WatchBatch] = []
        with trio.fail_after(5):
            async with contextlib.aclosing(backend.watch("/isthmus/e/", 5)) as watch:
                async for batch in watch:
                    batches.append(batch)
                    if len(batches) == 2:
                        break
    assert [(b.revision, [kv.key for kv in b.snapshot]) for b in batches] == [
        (10, ["/isthmus/e/a"]),
        (4, ["/isthmus/e/b"]),
    ]
    assert server.seen[0].query == {"recurse": [""]}
    assert server.seen[1].query["index"] == ["10"]


async def test_status_reports_the_leader_and_the_kv_index():
    async with replaying(Reply(body="10.1.10.12:8300"), Reply(status=404, index=77)) as (server, backend):
        status = await backend.status()
    assert (status.backend, status.reachable, status.revision) == ("consul", True, 77)
    assert "10.1.10.12:8300" in status.detail
    assert [s.path for s in server.seen] == ["/v1/status/leader", "/v1/kv/isthmus"]


async def test_no_leader_is_retried_then_reported_unavailable():
    no_leader = Reply(status=500, body="No cluster leader")
    async with replaying(*[no_leader] * 50) as (_, backend):
        with trio.fail_after(4):
            with pytest.raises(RegistryUnavailable, match="No cluster leader"):
                await backend.get_prefix("/isthmus/e/")


async def test_unreachable_agent_is_reported_at_once_with_address_and_hint():
    address = f"127.0.0.1:{free_port()}"
    backend = ConsulBackend(address)
    try:
        with trio.fail_after(2):
            with pytest.raises(RegistryUnavailable) as caught:
                await backend.txn([Put("/isthmus/e/a", b"1")])
            status = await backend.status()
    finally:
        await backend.aclose()
    assert caught.value.address == address and "consul agent running" in str(caught.value)
    assert not status.reachable
