"""The machine description every benchmark result carries (results are only comparable on one box)."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path
from typing import Any


def describe_machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def write_results(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write `payload` with `machine` and `date` added, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"machine": describe_machine(), "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    body.update(payload)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(body, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path
