"""The sqlite backend passes the one conformance suite every registry backend must pass."""

from __future__ import annotations

import itertools

import pytest

from registry.sqlite import open_sqlite_backend
from registry.testing import CHECKS, check_backend


@pytest.mark.parametrize("check", [c.__name__ for c in CHECKS])
async def test_sqlite_conformance(check, tmp_path):
    counter = itertools.count()

    def make_backend():
        return open_sqlite_backend(str(tmp_path / f"registry-{next(counter)}.db"))

    await check_backend(make_backend, only=(check,), lease_ttl_s=0.6, lease_deadline_s=5.0)
