"""Fixtures for the failover integration tests: one PKI per session."""

from __future__ import annotations

import pytest

from certs.testing import make_pki


@pytest.fixture(scope="session")
def gateway_pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("failover-pki"), identities=("gateway",))
