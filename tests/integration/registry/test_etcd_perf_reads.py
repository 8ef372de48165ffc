"""Fast prefix reads from real etcd: gRPC KV/Range with the gateway as the fallback.

A fresh watcher reads whole catalogs (100,000 endpoints) with `get_prefix`; these tests
check that the gRPC road gives exactly what the JSON gateway gives (keys, values of any
bytes and length, revisions, leases), page after page at one pinned revision, and that a
member whose gRPC port does not answer still serves the read through the gateway.
"""

from __future__ import annotations

import grpc
import pytest
import trio

from registry import etcd as etcd_module
from registry.backend import Put
from registry.errors import Compacted
from registry.etcd import EtcdBackend, ProtobufError, decode_range_response, encode_range_request
from tests.conftest import free_port
from tests.integration.registry.conftest import etcd_marks

pytestmark = etcd_marks

P = "/isthmus/perf/"


def values(i: int) -> bytes:
    """Small, empty, binary and > 127-byte values (two-byte protobuf lengths)."""
    return [b"v%d" % i, b"", bytes(range(256))[i % 200 :], b"x" * (130 + i)][i % 4]


async def write_keys(backend: EtcdBackend, count: int, lease: int = 0) -> int:
    revision = 0
    for start in range(0, count, 50):
        ops = [
            Put(f"{P}k{i:04d}", values(i), lease=lease if i % 5 == 0 else 0)
            for i in range(start, min(count, start + 50))
        ]
        revision = await backend.txn(ops)
    return revision


@pytest.fixture
def small_pages(monkeypatch):
    monkeypatch.setattr(etcd_module, "GRPC_RANGE_PAGE", 7)
    monkeypatch.setattr(etcd_module, "RANGE_PAGE", 7)


async def test_grpc_reads_give_exactly_what_the_gateway_gives_page_after_page(etcd_one, small_pages):
    fast = EtcdBackend(etcd_one.client_urls)
    slow = EtcdBackend(etcd_one.client_urls, grpc_reads=False)
    try:
        lease = await fast.grant_lease(60)
        written = await write_keys(fast, 61, lease)
        await fast.txn([Put("/isthmus/perg", b"outside the prefix")])
        fast_revision, fast_kvs = await fast.get_prefix(P)
        slow_revision, slow_kvs = await slow.get_prefix(P)
    finally:
        await fast.aclose()
        await slow.aclose()
    assert fast_kvs == slow_kvs
    assert fast_revision == slow_revision > written
    assert [kv.key for kv in fast_kvs] == [f"{P}k{i:04d}" for i in range(61)]
    assert [kv.value for kv in fast_kvs] == [values(i) for i in range(61)]
    assert {kv.lease for kv in fast_kvs} == {0, lease}
    assert fast.range_reads == {"grpc": 9, "gateway": 0}  # 61 keys in pages of 7
    assert slow.range_reads == {"grpc": 0, "gateway": 9}


async def test_a_paged_read_shows_one_revision_even_when_writes_land_between_pages(etcd_one, small_pages):
    backend = EtcdBackend(etcd_one.client_urls)
    writer = EtcdBackend(etcd_one.client_urls)
    try:
        before = await write_keys(writer, 20)
        real_range = backend._range
        pages = 0

        async def range_then_write(key, range_end, revision):
            nonlocal pages
            answer = await real_range(key, range_end, revision)
            pages += 1
            if pages == 1:  # between the first and the second page
                await writer.txn([Put(f"{P}k0015", b"changed"), Put(f"{P}k0009a", b"new")])
            return answer

        backend._range = range_then_write
        revision, kvs = await backend.get_prefix(P)
    finally:
        await backend.aclose()
        await writer.aclose()
    assert revision == before and pages == 3
    assert len(kvs) == 20 and dict((kv.key, kv.value) for kv in kvs)[f"{P}k0015"] == values(15)


async def test_a_read_at_a_compacted_revision_over_grpc_is_compacted(etcd_one):
    backend = EtcdBackend(etcd_one.client_urls)
    try:
        old = await write_keys(backend, 3)
        latest = await backend.txn([Put(f"{P}k0000", b"newer")])
        await backend.compact(latest)
        with pytest.raises(Compacted):
            await backend._get_prefix_paged(P, at_revision=old)
        revision, kvs = await backend.get_prefix(P)
    finally:
        await backend.aclose()
    assert revision == latest and kvs[0].value == b"newer"
    assert backend.range_reads["gateway"] == 0


async def test_a_member_whose_grpc_does_not_answer_is_read_through_the_gateway(etcd_one):
    backend = EtcdBackend(etcd_one.client_urls, attempt_timeout_s=1.0)
    dead = grpc.insecure_channel(
        f"127.0.0.1:{free_port('127.0.0.1')}", options=[("grpc.enable_http_proxy", 0)]
    )
    backend._channels[0] = (dead, dead.unary_unary(etcd_module.GRPC_RANGE_METHOD))
    try:
        written = await write_keys(backend, 12)
        with trio.fail_after(5):
            revision, kvs = await backend.get_prefix(P)
    finally:
        await backend.aclose()
    assert revision == written and [kv.value for kv in kvs] == [values(i) for i in range(12)]
    assert backend.range_reads == {"grpc": 0, "gateway": 1}


async def test_a_truncated_range_answer_is_refused_not_misread(etcd_one):
    backend = EtcdBackend(etcd_one.client_urls)
    try:
        revision = await write_keys(backend, 5)
    finally:
        await backend.aclose()
    host_port = etcd_one.client_urls[0].removeprefix("http://")
    with grpc.insecure_channel(host_port, options=[("grpc.enable_http_proxy", 0)]) as channel:
        call = channel.unary_unary(etcd_module.GRPC_RANGE_METHOD)
        answer = await trio.to_thread.run_sync(
            lambda: call(encode_range_request(P.encode(), b"/isthmus/perf0"), timeout=5)
        )
    header, kvs, more, count = decode_range_response(answer)
    assert header == revision and count == 5 and not more
    assert [kv.value for kv in kvs] == [values(i) for i in range(5)]
    for cut in (len(answer) - 1, len(answer) - 40, len(answer) // 2):
        with pytest.raises(ProtobufError):
            decode_range_response(answer[:cut])
