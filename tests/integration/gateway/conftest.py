"""Fixtures for the gateway's integration tests: one PKI per session, a two-cluster topology per test."""

from __future__ import annotations

import pytest

from certs.testing import make_pki
from tests.integration.gateway.support import open_topology


@pytest.fixture(scope="session")
def gateway_pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("gateway-pki"), identities=("gateway", "vault", "app"))


@pytest.fixture
async def topology(gateway_pki):
    async with open_topology(gateway_pki) as topo:
        yield topo
