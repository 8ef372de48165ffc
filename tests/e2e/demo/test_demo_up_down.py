"""The newcomer's first minutes: `isthmus demo up`, a request that crosses regions, `isthmus demo down`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from federation.demo import processes
from federation.demo.orchestrator import port_is_free

pytestmark = pytest.mark.slow


def isthmus(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "federation.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def test_demo_up_crosses_regions_and_down_leaves_nothing(tmp_path):
    demo_dir = tmp_path / "demo"
    up = isthmus("demo", "up", "--dir", str(demo_dir))
    try:
        assert up.returncode == 0, up.stderr
        assert "first cross-region request answered" in up.stderr
        status = json.loads(isthmus("demo", "status", "--dir", str(demo_dir), "--json").stdout)
        assert {c["name"] for c in status["clusters"]} == {"east-1", "east-2", "west-1"}
        for key in ("dir", "dashboard", "prometheus", "clusters", "endpoints"):
            assert key in status
        east = next(c for c in status["clusters"] if c["name"] == "east-1")
        assert {"config", "pki_dir", "outbound", "eastwest", "admin", "control", "pids", "zones", "region"} <= set(east)
        assert {e["service"] for e in status["endpoints"] if e["cluster"] == "west-1"} >= {"hello.demo", "echo.demo"}

        # hello.demo runs only in west-1 (eu-west): east-1's outbound gateway sends it across.
        response = httpx.get(f"http://{east['outbound']}/", headers={"host": "hello.demo"}, timeout=10)
        assert response.status_code == 200
        assert response.headers["x-isthmus-cluster"] == "west-1"
        assert response.json()["zone"] == "eu-west-1a"
        # echo.demo runs in east-1's own zone too: it stays local.
        local = httpx.get(f"http://{east['outbound']}/", headers={"host": "echo.demo"}, timeout=10)
        assert local.json()["cluster"] == "east-1"

        # A second `demo up` reports the running demo instead of starting another.
        again = isthmus("demo", "up", "--dir", str(demo_dir))
        assert again.returncode == 0
        assert "already running" in again.stderr
    finally:
        down = isthmus("demo", "down", "--dir", str(demo_dir))
    assert down.returncode == 0
    pids = [p for c in status["clusters"] for p in c["pids"]] + [e["pid"] for e in status["endpoints"]]
    assert pids and not [p for p in pids if processes.alive(p)]
    for c in status["clusters"]:
        for key in ("outbound", "eastwest", "admin", "control"):
            host, _, port = c[key].rpartition(":")
            assert port_is_free(host, int(port)), f"{c['name']} {key} {c[key]} still bound"
    assert json.loads(isthmus("demo", "status", "--dir", str(demo_dir), "--json").stdout) is None


def test_demo_up_on_a_taken_port_moves_to_a_free_one(tmp_path):
    """A busy default port does not stop the demo: the plan moves that listener to the next free port."""
    from federation.demo.topology import plan

    taken = {("127.0.1.1", 15001)}
    plans = plan(is_free=lambda host, port: (host, port) not in taken)
    east = next(p for p in plans if p.name == "east-1")
    assert east.outbound == 15002
    assert len({(p.host, port) for p in plans for port in (p.eastwest, p.outbound, p.admin, p.control, p.federation)}) == 15
