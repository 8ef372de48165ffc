"""`isthmus bench registry` at small scale: it runs end to end, prints its table and writes the JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_bench_registry_small_writes_results(tmp_path):
    out = tmp_path / "registry.json"
    result = subprocess.run(
        [sys.executable, "-m", "federation.cli", "bench", "registry", "--scale", "small", "--changes", "30", "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "fresh watcher holds full catalog" in result.stdout
    data = json.loads(out.read_text())
    assert data["endpoints"] == data["watcher_endpoints_held"] == 1000
    assert data["changes_seen"] == 30 and data["latency_ms"]["p99"] is not None
    assert data["machine"] and data["date"]


def test_bench_registry_bad_rate_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "federation.cli", "bench", "registry", "--rate", "0", "--out", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "isthmus: error: --rate 0.0 / --changes 1000: need a positive rate and a non-negative count"
    ]
