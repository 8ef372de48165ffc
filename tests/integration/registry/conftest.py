"""Fixtures for the registry's integration tests: throwaway etcd clusters on loopback.

Each test starts its own etcd (1 or 3 members) under its own tmp_path through
`registry.etcd_process.open_etcd`, so no state is shared between tests. Tests that need
etcd are marked `etcd` and skipped, with the reason, when the binary is missing.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from registry.etcd import EtcdBackend
from registry.etcd_process import EtcdCluster, open_etcd

ETCD_MISSING_REASON = "the etcd binary is not on PATH (apt-get install etcd-server)"

etcd_marks = [
    pytest.mark.etcd,
    pytest.mark.skipif(shutil.which("etcd") is None, reason=ETCD_MISSING_REASON),
]


def needs_etcd(test):
    """Mark `test` as needing the etcd binary (skipped with the reason when it is missing)."""
    for mark in etcd_marks:
        test = mark(test)
    return test


def etcd_backend_maker(
    tmp_path: Path, *, members: int = 1
) -> Callable[[], AbstractAsyncContextManager[EtcdBackend]]:
    """A `make_backend` for `check_backend`: each call starts a fresh, empty etcd cluster."""
    counter = itertools.count()

    @asynccontextmanager
    async def make() -> AsyncIterator[EtcdBackend]:
        async with open_etcd(tmp_path / f"etcd-{next(counter)}", members=members) as cluster:
            backend = EtcdBackend(cluster.client_urls)
            try:
                yield backend
            finally:
                await backend.aclose()

    return make


@pytest.fixture
async def etcd_one(tmp_path: Path) -> AsyncIterator[EtcdCluster]:
    async with open_etcd(tmp_path / "etcd", members=1) as cluster:
        yield cluster


@pytest.fixture
async def etcd_three(tmp_path: Path) -> AsyncIterator[EtcdCluster]:
    async with open_etcd(tmp_path / "etcd", members=3) as cluster:
        yield cluster
