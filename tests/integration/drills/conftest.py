"""A demo the drill tests attach to (started once for the package), and the CLI as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def isthmus(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "federation.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200", **(env or {})})


def demo_state(demo_dir: Path) -> dict:
    return json.loads((demo_dir / "demo.json").read_text())


@pytest.fixture(scope="package")
def drills_demo(tmp_path_factory):
    """A running sqlite-backed demo; stopped when the package's tests are done."""
    demo_dir = tmp_path_factory.mktemp("drills") / "demo"
    up = isthmus("demo", "up", "--dir", str(demo_dir))
    assert up.returncode == 0, up.stderr[-3000:]
    try:
        yield demo_dir
    finally:
        isthmus("demo", "down", "--dir", str(demo_dir))
