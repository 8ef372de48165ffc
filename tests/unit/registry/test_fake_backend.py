"""The in-memory FakeBackend passes the same conformance suite as the real backends."""

from __future__ import annotations

import pytest
import trio

from registry.backend import Put
from registry.errors import LeaseExpired
from registry.testing import CHECKS, FakeBackend, check_backend, open_fake_backend


@pytest.mark.parametrize("check", [c.__name__ for c in CHECKS])
async def test_fake_backend_conformance(check, autojump_clock):
    await check_backend(open_fake_backend, only=(check,))


async def test_lease_expiry_on_a_hand_moved_clock():
    now = [100.0]
    backend = FakeBackend(clock=lambda: now[0])
    lease = await backend.grant_lease(30)
    await backend.txn([Put("/k", b"v", lease=lease)])
    now[0] += 29.9
    assert [kv.key for kv in (await backend.get_prefix("/"))[1]] == ["/k"]
    now[0] += 0.2
    assert (await backend.get_prefix("/"))[1] == []
    with pytest.raises(LeaseExpired):
        await backend.keepalive(lease)


async def test_put_with_an_unknown_lease_writes_nothing():
    backend = FakeBackend()
    with pytest.raises(LeaseExpired):
        await backend.txn([Put("/a", b"1"), Put("/b", b"2", lease=12345)])
    assert (await backend.get_prefix("/"))[1] == []


async def test_a_backend_that_is_down_reports_unreachable():
    backend = FakeBackend()
    backend.fail_with = OSError("down")
    status = await backend.status()
    assert not status.reachable
    with pytest.raises(OSError):
        await backend.get_prefix("/")
    await trio.lowlevel.checkpoint()
