"""Fixtures shared by every test layer. Layer-specific ones live in tests/<layer>/conftest.py."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

_handed_out: set[tuple[str, int]] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host`, for the caller to bind soon after.

    Chosen below the kernel's ephemeral range: outgoing connections (gateways dial out from their
    cluster's address) take ephemeral ports, and one could otherwise grab the port between this check
    and the caller's bind. A port is never handed out twice in one test process.
    """
    high = _ephemeral_low() - 1
    rng = random.Random()
    for _ in range(1000):
        port = rng.randint(20000, high)
        if (host, port) in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add((host, port))
        return port
    raise RuntimeError(f"no free port below {high + 1} on {host}")


@pytest.fixture
def unused_port():
    return free_port


@pytest.fixture
def without_opentelemetry(monkeypatch):
    """Every `opentelemetry` import fails, as when the `otlp` extra is not installed."""
    import sys

    import gateway.otlp

    for name in [n for n in sys.modules if n == "opentelemetry" or n.startswith("opentelemetry.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.setattr(gateway.otlp, "_sdk", None)
