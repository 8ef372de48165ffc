"""The registry conformance suite against real etcd: one member, and a 3-member cluster."""

from __future__ import annotations

import pytest

from registry.testing import CHECKS, check_backend
from tests.integration.registry.conftest import etcd_backend_maker, etcd_marks

pytestmark = etcd_marks

# etcd raises a lease's TTL to its minimum (1.5 × election timeout, rounded up: 2 s).
ETCD_OPTIONS = {"lease_ttl_s": 2.0, "lease_deadline_s": 10.0, "watch_timeout_s": 10.0}


@pytest.mark.parametrize("check", [c.__name__ for c in CHECKS])
async def test_single_member_conforms(tmp_path, check):
    await check_backend(etcd_backend_maker(tmp_path, members=1), only=(check,), **ETCD_OPTIONS)


async def test_three_member_cluster_conforms(tmp_path):
    await check_backend(etcd_backend_maker(tmp_path, members=3), **ETCD_OPTIONS)
