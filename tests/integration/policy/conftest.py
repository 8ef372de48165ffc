"""Fixtures for traffic-policy integration tests: two real gateways with route rules, authorization
and access logs, over real upstreams on loopback."""

from __future__ import annotations

import pytest

from certs.testing import make_pki
from tests.integration.policy.policy_support import open_policy_topology


@pytest.fixture(scope="session")
def policy_pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("policy-pki"))


@pytest.fixture
async def policy_topology(policy_pki, tmp_path):
    async with open_policy_topology(policy_pki, tmp_path) as topo:
        yield topo
