"""The access-log file: JSON lines appended to one file, rotated by size.

`access.log` is renamed `access.log.1` (older ones shift to `.2` ... up to `backups`, the oldest
dropped) when the next write would take it past `max_bytes`. This is plain blocking file I/O: the
gateway hands it batches of lines from a worker thread (`trio.to_thread.run_sync`) so the event
loop never waits on the disk. Formatting and sampling live in `gateway.policy.accesslog`.

Must not import trio or `federation`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from gateway.errors import ConfigInvalid
from gateway.policy.accesslog import AccessLogConfig


class RotatingLogFile:
    """Append-only, size-rotated log file. Not thread-safe: one writer (thread) per file."""

    def __init__(self, path: str | Path, *, max_bytes: int, backups: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._file = self._open()
        self.size = self._file.tell()

    @classmethod
    def from_config(cls, config: AccessLogConfig) -> RotatingLogFile:
        if config.path == "-":
            raise ConfigInvalid("access_log.path: '-' is stdout, not a file")
        return cls(config.path, max_bytes=config.max_bytes, backups=config.backups)

    def _open(self) -> IO[bytes]:
        try:
            return open(self.path, "ab")  # noqa: SIM115 (kept open for the life of the writer)
        except OSError as exc:
            raise ConfigInvalid(f"access_log.path: cannot open {str(self.path)!r}: {exc.strerror}") from None

    def write_lines(self, lines: Iterable[str]) -> None:
        """Append each line and a newline, rotating first when the batch would pass `max_bytes`."""
        data = "".join(line + "\n" for line in lines).encode("utf-8")
        if not data:
            return
        if self.size and self.size + len(data) > self.max_bytes:
            self.rotate()
        self._file.write(data)
        self._file.flush()
        self.size += len(data)

    def rotate(self) -> None:
        """Shift `path.N-1` to `path.N` ..., `path` to `path.1`, and start an empty `path`."""
        self._file.close()
        if self.backups:
            for index in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._file = self._open()
        self.size = 0

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RotatingLogFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
