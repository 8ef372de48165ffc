"""`--workers N`: N gateway processes sharing the listening ports with SO_REUSEPORT.

The supervisor starts each worker as its own process (a command line given by the caller),
forwards SIGTERM/SIGINT to every worker so each drains, and returns when all have exited. If a
worker dies on its own, the others are told to drain too: a partial gateway is worse than a
restarted one. The kernel spreads new connections over the workers; a connection stays on one.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence


def supervise(commands: Sequence[Sequence[str]]) -> int:
    """Run every command as a worker; the largest exit status of the workers is returned."""
    children = [subprocess.Popen(list(cmd)) for cmd in commands]
    stopping = False

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def forward_reload(signum: int, frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGHUP)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, forward_reload)  # every worker reloads its identity
    status = 0
    try:
        remaining = {child.pid: child for child in children}
        while remaining:
            try:
                pid, raw = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            child = remaining.pop(pid, None)
            if child is None:
                continue
            child.returncode = os.waitstatus_to_exitcode(raw)
            code = child.returncode
            status = max(status, code if code > 0 else (0 if stopping else 1))
            if not stopping:
                forward(signal.SIGTERM, None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
