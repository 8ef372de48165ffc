"""Detached processes the demo starts and later stops: spawn with a log file, check, terminate.

The demo outlives the `isthmus demo up` command that starts it, so its processes are ordinary
detached children (own session, output to `<dir>/logs/<name>.log`), remembered by pid in the
demo's state file. Stopping sends SIGTERM to each process group, waits (trio time) and then SIGKILLs
what is left, so `demo down` leaves no process and no port behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

TERM_GRACE_S = 5.0


def isthmus_argv(*args: str) -> list[str]:
    """Run the `isthmus` CLI of this very interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "federation.cli", *args]


def spawn(name: str, argv: Sequence[str], log_dir: Path, env: dict[str, str] | None = None) -> int:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    finally:
        log.close()
    return proc.pid


def alive(pid: int) -> bool:
    """True while `pid` runs and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


async def stop(pids: Sequence[int], grace_s: float = TERM_GRACE_S) -> list[int]:
    """Terminate every pid (and its process group); returns the pids that had to be killed."""
    for pid in pids:
        signal_group(pid, signal.SIGTERM)
    with trio.move_on_after(grace_s):
        while True:
            for pid in pids:
                _reap(pid)
            if not any(alive(pid) for pid in pids):
                return []
            await trio.sleep(0.05)
    killed = [pid for pid in pids if alive(pid)]
    for pid in killed:
        signal_group(pid, signal.SIGKILL)
    for pid in killed:
        _reap(pid)
    return killed
