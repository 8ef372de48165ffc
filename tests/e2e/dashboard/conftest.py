"""Fixtures for the dashboard's browser and CLI tests: one PKI per session."""

from __future__ import annotations

import pytest

from certs.testing import make_pki


@pytest.fixture(scope="session")
def dashboard_pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("dashboard-e2e-pki"), identities=("gateway", "vault", "app"))
