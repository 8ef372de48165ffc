"""`isthmus bench registry --backend etcd` says where a fresh watcher's time went.

Small scale against a real throwaway etcd: the JSON carries every watcher run's hold time,
the watcher's CPU, its wait for a busy core, etcd's own CPU during the hold, and the range
pages read over gRPC (none through the gateway while etcd's gRPC answers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.integration.registry.conftest import etcd_marks

pytestmark = etcd_marks

REPO = Path(__file__).resolve().parents[3]


def bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "federation.cli", "bench", "registry", *args],
        capture_output=True, text=True, timeout=180, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "240"},
    )  # fmt: skip


def test_etcd_bench_breaks_the_hold_time_down(tmp_path):
    out = tmp_path / "registry-etcd.json"
    result = bench(
        tmp_path,
        "--backend",
        "etcd",
        "--scale",
        "small",
        "--changes",
        "20",
        "--watchers",
        "2",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "where the time went" in result.stdout and "etcd CPU" in result.stdout
    data = json.loads(out.read_text())
    assert data["backend"] == "etcd" and data["watcher_endpoints_held"] == 1000
    assert len(data["watcher_hold_runs_s"]) == 2 and data["watcher_hold_s"] in data["watcher_hold_runs_s"]
    assert data["server_cpu_during_hold_s"] is not None and data["server_cpu_during_hold_s"] >= 0
    assert data["watcher_runqueue_wait_s"] >= 0 and data["watcher_hold_cpu_s"] > 0
    assert data["watcher_range_pages"] == {"grpc": 2, "gateway": 0}  # one page per cluster
    assert data["gateway_reads_only"]["watcher_range_pages"] == {"grpc": 0, "gateway": 2}
    assert data["changes_seen"] == 20


def test_a_bad_watcher_count_is_one_line(tmp_path):
    result = bench(tmp_path, "--backend", "etcd", "--watchers", "0", "--out", str(tmp_path / "r.json"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["isthmus: error: --watchers 0: need 1-20 watcher runs"]
