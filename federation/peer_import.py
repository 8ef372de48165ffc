"""The trio shell around one peer's import: connect, stream, apply, back off, repeat.

The decisions are `federation.sync`'s (pure); this module only moves messages from an open
import stream into `on_message` and reports every change. The transport is a callable
`open_stream(from_revision)` returning an async context manager that yields a `Stream` (the
identity the peer authenticated as, and its decoded messages); `federation.control` provides the
HTTP one (`GET /v1/federation/watch` through the peer's east-west gateway, authority
`federation.isthmus`), tests provide scripted ones. Transport failures are `StreamBroken`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs
import trio

from federation.errors import FederationError
from federation.imports import ExportView, PeerContext
from federation.sync import (
    PeerSync,
    Resynced,
    SyncState,
    connected,
    disconnected,
    on_message,
    reconnect_delay,
)

log = logging.getLogger("isthmus.federation.sync")


class StreamBroken(FederationError):
    """The import stream from a peer failed (connection refused, reset, TLS, HTTP status, timeout)."""


@attrs.frozen
class Stream:
    """An open import stream: the identity the peer authenticated as, and its messages."""

    sender: str | None
    messages: AsyncIterator[Any]


OpenStream = Callable[[int], AbstractAsyncContextManager[Stream]]


class PeerImport:
    """The trio shell around one `PeerSync`: holds the current value and reports changes."""

    def __init__(
        self,
        ctx: PeerContext,
        open_stream: OpenStream,
        *,
        on_change: Callable[[PeerImport], None] = lambda _p: None,
        on_latency: Callable[[str, float], None] = lambda _peer, _s: None,
        rng: random.Random | None = None,
        idle_timeout_s: float = 15.0,
        initial: ExportView | None = None,
    ) -> None:
        self.sync = PeerSync(ctx)
        if initial is not None:
            # A view persisted before a restart: served while stale until the peer confirms it.
            self.sync = attrs.evolve(self.sync, state=SyncState.STALE, view=initial, initial_sync_complete=True)
        self.open_stream = open_stream
        self.on_change = on_change
        self.on_latency = on_latency
        self.rng = rng or random.Random()
        self.idle_timeout_s = idle_timeout_s
        self.resyncs: list[Resynced] = []
        self._started_stale = initial is not None
        self._logged: set[tuple[str, str]] = set()
        self._wake = trio.Event()

    def wake(self) -> None:
        """Cut the current reconnect backoff short (the peer was seen answering again)."""
        self._wake.set()

    def __repr__(self) -> str:
        return f"<PeerImport {self.sync.peer} {self.sync.state.value} rev={self.sync.revision}>"

    async def serve(self, *, task_status: Any = None) -> None:
        """Import from the peer until cancelled."""
        if self._started_stale and self.sync.stale_since is None:
            self.sync = attrs.evolve(self.sync, stale_since=trio.current_time())
        if task_status is not None:
            task_status.started()
        attempt = 0
        while True:
            try:
                await self._run_once()
                error = "the peer closed the stream"
            except StreamBroken as exc:
                error = str(exc)
            except trio.TooSlowError:
                error = f"no message for {self.idle_timeout_s:g} s"
            now = trio.current_time()
            was_synced = self.sync.state is SyncState.SYNCED
            self.sync = disconnected(self.sync, now=now, error=error)
            if was_synced:
                log.warning("peer %s: import stream lost (%s); imports kept, marked stale", self.sync.peer, error)
                attempt = 0
            self.on_change(self)
            self._wake = trio.Event()
            with trio.move_on_after(reconnect_delay(attempt, self.rng)):
                await self._wake.wait()
            attempt += 1

    async def _run_once(self) -> None:
        async with self.open_stream(self.sync.watch_from()) as stream:
            self.sync = connected(self.sync, now=trio.current_time())
            self.on_change(self)
            iterator = stream.messages.__aiter__()
            while True:
                with trio.fail_after(self.idle_timeout_s):
                    try:
                        message = await iterator.__anext__()
                    except StopAsyncIteration:
                        return
                self.sync, applied = on_message(self.sync, message, sender=stream.sender, now=trio.current_time())
                if applied.changed and isinstance(message, dict) and isinstance(message.get("at"), int | float):
                    # Wall clocks of two clusters: meaningful when they are synchronised (`cluster check`).
                    self.on_latency(self.sync.peer, max(0.0, time.time() - message["at"]))
                for refusal in applied.refusals:
                    key = (refusal.reason, refusal.item)
                    if key not in self._logged:  # logged once; every refusal is counted in `sync.refused`
                        self._logged.add(key)
                        log.warning("%s", refusal)
                if applied.resynced is not None:
                    self.resyncs.append(applied.resynced)
                    r = applied.resynced
                    log.info("peer %s: resynced %d -> %d (+%d -%d ~%d endpoints)", r.peer, r.from_revision,
                             r.to_revision, r.added, r.removed, r.changed)  # fmt: skip
                self.on_change(self)
