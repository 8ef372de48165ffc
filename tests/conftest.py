"""Fixtures shared by every test layer. Layer-specific ones live in tests/<layer>/conftest.py."""

from __future__ import annotations

import socket

import pytest


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host` (the caller binds it soon after)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@pytest.fixture
def unused_port():
    return free_port
