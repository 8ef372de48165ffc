"""`isthmus bench gateway` as a user runs it, at a tiny duration against `direct`, `haproxy-tcp` and
`h2-floor`:
the JSON has the documented shape, every process it started is gone afterwards (Ctrl-C included),
and bad options end with one line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from federation.bench._loadtools import missing_tools

REPO = Path(__file__).resolve().parents[3]
MISSING = missing_tools(["h2load", "nghttpd", "haproxy", "taskset"])
needs_tools = pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)}")
needs_two_cpus = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs CPUs 0 and 1")
RUN_KEYS = {"target", "body_bytes", "streams", "rps", "p50_ms", "p99_ms", "cpu_us_per_req"}


def bench_argv(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "federation.cli", "bench", "gateway", "--out", str(out), *extra]


@needs_tools
@needs_two_cpus
def test_tiny_run_writes_every_run_with_cpu_per_request(tmp_path: Path) -> None:
    out = tmp_path / "gateway.json"
    argv = bench_argv(out, "--duration", "0.3", "--rounds", "1", "--targets", "direct,haproxy-tcp,h2-floor",
                      "--no-workers-check")
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr

    payload = json.loads(out.read_text())
    assert {"machine", "date", "runs", "efficiency", "notes"} <= set(payload)
    runs = {(r["target"], r["body_bytes"], r["streams"]): r for r in payload["runs"]}
    targets = ("direct", "haproxy-tcp", "h2-floor")
    assert set(runs) == {(t, b, s) for t in targets for b in (100, 65536) for s in (1, 50)}
    for run in payload["runs"]:
        assert set(run) == RUN_KEYS
        assert run["rps"] > 0 and 0 < run["p50_ms"] <= run["p99_ms"]
        if run["target"] == "direct":
            assert run["cpu_us_per_req"] is None  # no proxy in the path
        else:
            assert run["cpu_us_per_req"] > 0
    added = {(a["target"], a["body_bytes"]) for a in payload["efficiency"]["added_latency"]}
    assert added == {(t, b) for t in ("haproxy-tcp", "h2-floor") for b in (100, 65536)}
    # The floor is measured beside the targets, not rated against a goal (haproxy-l7 did not run here).
    assert not [e for e in payload["efficiency"]["cpu"] if e["target"] == "h2-floor"]
    assert "not measured" not in payload["notes"]
    assert "mutual TLS originated" in payload["notes"]
    assert "haproxy-tcp" in result.stdout and "req/s" in result.stdout


@needs_tools
@needs_two_cpus
def test_ctrl_c_stops_every_process_the_bench_started(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        bench_argv(tmp_path / "gateway.json", "--duration", "30", "--rounds", "1", "--targets", "direct,haproxy-tcp"),
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        parent = psutil.Process(proc.pid)
        started: dict[int, psutil.Process] = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # until the upstream, HAProxy and h2load are all running
            for child in parent.children(recursive=True):
                started.setdefault(child.pid, child)
            names = {c.name() for c in started.values() if c.is_running()}
            if {"nghttpd", "haproxy", "h2load"} <= names:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"the bench did not get to load (saw {names}): {proc.stderr}")
        nghttpd = next(c for c in started.values() if c.is_running() and c.name() == "nghttpd")
        work_dir = Path(nghttpd.cmdline()[nghttpd.cmdline().index("-d") + 1]).parent
        assert work_dir.is_dir()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 130
        assert "interrupted" in proc.stderr.read()
        _gone, alive = psutil.wait_procs(list(started.values()), timeout=5)
        assert alive == []
        assert not (tmp_path / "gateway.json").exists()
        # Nothing left behind: the working directory (keys, configs) and h2load's log on tmpfs.
        assert not work_dir.exists()
        assert not Path(f"/dev/shm/isthmus-bench-{proc.pid}.log").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_unknown_target_is_one_line_error(tmp_path: Path) -> None:
    argv = bench_argv(tmp_path / "gateway.json", "--targets", "direct,nginx")
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "isthmus: error: --targets: 'nginx' is not one of direct, haproxy-l7, haproxy-tcp, isthmus-l7, "
        "isthmus-passthrough, isthmus-pair, h2-floor"
    ]
