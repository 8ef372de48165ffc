"""The access-log writer: JSON lines handed off the hot path to a writer task.

A request (or TCP connection) ends with `AccessLogWriter.submit(record)`: the sampling decision
and the JSON formatting are pure (`gateway.policy.accesslog`), the line goes into a bounded
trio memory channel (`send_nowait`; when the writer falls behind, lines are dropped and counted
in `isthmus_access_log_dropped_total`, never waited for), and `AccessLogWriter.serve` takes
batches off the channel (a line waits at most `FLUSH_INTERVAL_S` for company) and writes them
from a worker thread (`trio.to_thread.run_sync`): to a size-rotated file
(`gateway.accesslog_file.RotatingLogFile`) or to stdout.

Must not import `federation`.
"""

from __future__ import annotations

import logging
import random
import sys
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Counter

from gateway.accesslog_file import RotatingLogFile
from gateway.policy.accesslog import STDOUT, AccessLogConfig, AccessLogRecord

log = logging.getLogger("isthmus.gateway.accesslog")

QUEUE_LINES = 8192
BATCH_LINES = 512
FLUSH_INTERVAL_S = 0.05  # how long a line may wait for company before it is written


class AccessLogWriter:
    """Where one gateway's access-log lines go; `serve()` must run for anything to be written."""

    def __init__(self, config: AccessLogConfig, *, registry: CollectorRegistry | None = None,
                 rng: random.Random | None = None, queue_lines: int = QUEUE_LINES) -> None:
        self.config = config
        self.rng = rng or random.Random()
        self._send, self._receive = trio.open_memory_channel[str](queue_lines)
        self.written = 0
        self.pending = 0  # queued or being written
        self._drained = trio.Event()
        self.dropped = Counter(
            "isthmus_access_log_dropped", "Access-log lines dropped because the writer fell behind",
            registry=registry,
        )

    def submit(self, record: AccessLogRecord) -> None:
        """Sample, format and queue one record; never blocks."""
        if not self.config.should_log(record, self.rng):
            return
        try:
            self._send.send_nowait(self.config.format(record))
            self.pending += 1
        except trio.WouldBlock:
            self.dropped.inc()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Write queued lines in batches until cancelled; the file is opened here (one line on failure)."""
        sink: RotatingLogFile | None = None
        if self.config.path != STDOUT:
            sink = await trio.to_thread.run_sync(RotatingLogFile.from_config, self.config)
        write = sink.write_lines if sink is not None else _write_stdout
        task_status.started()
        try:
            while True:
                batch = [await self._receive.receive()]
                # Gather lines for a moment: one worker-thread hop per batch, not per request (a
                # thread hop costs several times the formatting of a line).
                await trio.sleep(FLUSH_INTERVAL_S)
                while len(batch) < BATCH_LINES:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                try:
                    await trio.to_thread.run_sync(write, batch)
                    self.written += len(batch)
                except OSError as exc:
                    log.warning("access log: cannot write %d lines: %s", len(batch), exc)
                finally:
                    self.pending -= len(batch)
                    if not self.pending:
                        self._drained.set()
        finally:
            if sink is not None:
                # Flush what is still queued (a last blocking write on the way out), then close the file.
                rest = []
                while True:
                    try:
                        rest.append(self._receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                if rest:
                    try:
                        sink.write_lines(rest)
                        self.written += len(rest)
                    except OSError as exc:
                        log.warning("access log: cannot write %d lines: %s", len(rest), exc)
                sink.close()

    async def flushed(self, timeout_s: float = 5.0) -> None:
        """Wait until every queued line has been written (tests and shutdown)."""
        with trio.move_on_after(timeout_s):
            while self.pending:
                self._drained = trio.Event()
                await self._drained.wait()


def _write_stdout(lines: list[str]) -> None:
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()
