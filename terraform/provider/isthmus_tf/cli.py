"""The provider's only way to act: run the `isthmus` command line and read what it prints.

Owns the command contract the resources rely on (`isthmus demo up|down|status`, `cluster
token|register|list|remove`, `service export|list|policy`, `service routes --file|--show|--remove`), the lock that keeps concurrent
Terraform operations on one demo directory from racing, and the translation of a failed command
(exit status 2, one line on stderr) into `CommandFailed`. Must not import `tf` (resources turn
`CommandFailed` into diagnostics) nor Isthmus itself (it lives in another virtualenv).

Terraform runs resource operations in parallel threads of one provider process: `demo up` and
`demo down` rewrite the demo's state file, so they hold an exclusive lock on the directory while
every other command holds a shared one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

LOCK_FILE = ".isthmus-terraform.lock"
# `demo up` starts PKI, control planes, gateways and sample services; everything else is one call.
UP_TIMEOUT_S = 300.0
COMMAND_TIMEOUT_S = 60.0


class CommandFailed(Exception):
    """An `isthmus` command failed; `summary` is its one-line reason, `detail` the command and output."""

    def __init__(self, summary: str, detail: str = "") -> None:
        super().__init__(summary)
        self.summary = summary
        self.detail = detail


def default_isthmus_bin() -> str:
    """`isthmus` on PATH, else the project's own virtualenv next to this provider's source."""
    found = shutil.which("isthmus")
    if found:
        return found
    repo = Path(__file__).resolve().parents[3]
    return str(repo / ".venv" / "bin" / "isthmus")


_ERROR_PREFIX = re.compile(r"^isthmus(?: [\w-]+)*: error: ")


def _last_error_line(stderr: str) -> str:
    """The one-line reason: the last `isthmus[ NOUN]: error: ...` line without its prefix, else the last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if _ERROR_PREFIX.match(line):
            return _ERROR_PREFIX.sub("", line)
    return lines[-1] if lines else ""


class Isthmus:
    """One `isthmus` executable; commands on a demo directory are serialised by `lock(dir)`."""

    def __init__(self, executable: str | None = None) -> None:
        self.executable = executable or default_isthmus_bin()
        self._status_cache: dict[str, Any] = {}
        self._cache_guard = threading.Lock()

    # -- running one command ---------------------------------------------------------------------

    def run(
        self, argv: Sequence[str], *, timeout_s: float = COMMAND_TIMEOUT_S, secret: str | None = None
    ) -> str:
        """Run `isthmus ARGV...` and return its stdout; raise `CommandFailed` on any failure.

        Output goes to temporary files, not pipes: `demo up` leaves daemons running that inherit
        them, and a pipe would stay open until they exit. A new session keeps those daemons out of
        Terraform's process group, so a Ctrl-C at the terminal does not reach them.
        """
        command = [self.executable, *argv]
        shown = " ".join("<token>" if secret and arg == secret else arg for arg in command)
        if not os.path.exists(self.executable):
            raise CommandFailed(
                f"isthmus_bin: {self.executable} does not exist",
                "Set isthmus_bin in the provider block to the isthmus executable "
                "(e.g. <repo>/.venv/bin/isthmus), or put isthmus on PATH.",
            )
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            try:
                proc = subprocess.run(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    timeout=timeout_s,
                    start_new_session=True,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise CommandFailed(f"`{shown}` did not finish within {timeout_s:g} s") from None
            except OSError as exc:
                raise CommandFailed(f"cannot run {self.executable}: {exc.strerror or exc}", shown) from None
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        if proc.returncode != 0:
            reason = _last_error_line(stderr) or f"exit status {proc.returncode}"
            if secret:
                reason = reason.replace(secret, "<token>")
            detail = f"command: {shown}\nexit status {proc.returncode}"
            if "Traceback (most recent call last)" in stderr:
                detail += "\nisthmus crashed: run the command above by hand to see why"
            raise CommandFailed(f"isthmus {' '.join(argv[:2])}: {reason}", detail)
        return stdout

    def run_json(self, argv: Sequence[str]) -> Any:
        stdout = self.run(argv)
        try:
            return json.loads(stdout)
        except ValueError:
            raise CommandFailed(
                f"isthmus {' '.join(argv[:2])}: printed no JSON",
                f"command: {self.executable} {' '.join(argv)}",
            ) from None

    # -- the lock on a demo directory ------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, directory: str, *, exclusive: bool) -> Iterator[None]:
        """Exclusive for `demo up/down` (they rewrite the demo's state), shared for the rest.

        Each holder opens the lock file itself, so flock orders the threads of this process and
        other processes (a second Terraform run, a user's `isthmus demo up`) alike.
        """
        path = Path(directory).resolve()
        try:
            path.mkdir(parents=True, exist_ok=True)
            handle = open(path / LOCK_FILE, "a+")  # closed below, after unlocking
        except OSError as exc:
            raise CommandFailed(f"dir: cannot use {path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        finally:
            handle.close()

    # -- the demo --------------------------------------------------------------------------------

    def demo_status(self, directory: str, *, fresh: bool = False) -> dict[str, Any] | None:
        """`isthmus demo status --dir DIR --json`, cached until this process changes the demo.

        One fetch at a time: the resources Terraform refreshes in parallel share its answer.
        Callers hold the directory's lock, so no `demo up/down` runs while the cache fills.
        """
        key = str(Path(directory).resolve())
        with self._cache_guard:
            if not fresh and key in self._status_cache:
                return self._status_cache[key]
            status = self.run_json(["demo", "status", "--dir", directory, "--json"])
            if status is not None and not isinstance(status, dict):
                raise CommandFailed("isthmus demo status: printed JSON that is not an object or null")
            self._status_cache[key] = status
            return status

    def _forget_status(self, directory: str) -> None:
        with self._cache_guard:
            self._status_cache.pop(str(Path(directory).resolve()), None)

    def demo_up(self, directory: str, cluster: str, backend: str) -> None:
        with self.lock(directory, exclusive=True):
            try:
                self.run(
                    ["demo", "up", "--dir", directory, "--clusters", cluster, "--bare", "--backend", backend],
                    timeout_s=UP_TIMEOUT_S,
                )
            finally:
                self._forget_status(directory)

    def demo_down(self, directory: str, cluster: str) -> None:
        with self.lock(directory, exclusive=True):
            try:
                self.run(["demo", "down", "--dir", directory, "--clusters", cluster], timeout_s=UP_TIMEOUT_S)
            finally:
                self._forget_status(directory)

    def cluster_in_demo(self, directory: str, name: str, *, fresh: bool = False) -> dict[str, Any] | None:
        """The cluster's entry of `demo status`, or None when the demo or the cluster is not running."""
        if not Path(directory).exists():
            return None
        with self.lock(directory, exclusive=False):
            status = self.demo_status(directory, fresh=fresh)
        if not status:
            return None
        processes = status.get("processes") if isinstance(status.get("processes"), dict) else {}
        for entry in status.get("clusters") or []:
            if isinstance(entry, dict) and entry.get("name") == name:
                if not isinstance(entry.get("config"), str):
                    raise CommandFailed(f"isthmus demo status: cluster {name} has no config path")
                pids = [p for p in entry.get("pids") or [] if isinstance(p, int)]
                pids += [
                    p["pid"]
                    for p in processes.values()
                    if isinstance(p, dict) and p.get("cluster") == name and isinstance(p.get("pid"), int)
                ]
                if pids and not any(_alive(p) for p in pids):
                    return None  # listed, but every process of it has died: gone
                return {**entry, "backend": status.get("backend")}
        return None

    def config_of(self, directory: str, name: str) -> str:
        """The cluster TOML of a running demo cluster, or CommandFailed naming what is missing."""
        entry = self.cluster_in_demo(directory, name)
        if entry is None or not entry.get("config"):
            raise CommandFailed(
                f"cluster {name} is not running in {directory}",
                "Create it first with an isthmus_cluster resource (or `isthmus demo up`).",
            )
        return str(entry["config"])

    # -- clusters, services, policies ------------------------------------------------------------

    def shared(self, directory: str, argv: Sequence[str], *, secret: str | None = None) -> str:
        with self.lock(directory, exclusive=False):
            return self.run(argv, secret=secret)

    def shared_json(self, directory: str, argv: Sequence[str]) -> Any:
        with self.lock(directory, exclusive=False):
            return self.run_json(argv)

    def peers(self, directory: str, config: str) -> list[str]:
        listing = self.shared_json(directory, ["cluster", "list", "--config", config, "--json"])
        if not isinstance(listing, list):
            raise CommandFailed("isthmus cluster list: printed JSON that is not a list")
        return [p["name"] for p in listing if isinstance(p, dict) and isinstance(p.get("name"), str)]

    def services(self, directory: str, config: str) -> list[dict[str, Any]]:
        listing = self.shared_json(directory, ["service", "list", "--config", config, "--json"])
        if not isinstance(listing, list):
            raise CommandFailed("isthmus service list: printed JSON that is not a list")
        return [row for row in listing if isinstance(row, dict)]


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (an exited child nobody has reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
