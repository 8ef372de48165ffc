"""The loop that runs periodic checks (active health checks, gateway-pair probes): every check when it is
due, at most one at a time per key. The timing decisions (`due`, `started`) belong to the pure check
objects in `gateway.lb.health`; this module only runs them under trio."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import trio

TICK_S = 0.05  # how often due checks are looked for (the checks themselves run every `interval_s`)


class PeriodicChecks:
    """Base of `HealthChecker` and `PeerProber`. Subclasses keep `self.running: set[str]` and provide
    `sync(now)` (refresh the checks), `due_checks()` (key -> check with `.due(now)`/`.started(now)`),
    `check_one(key, check)` (one check; `running` is cleared for it afterwards), and may override
    `after_tick(now)`."""

    running: set[str]

    def sync(self, now: float) -> None:
        raise NotImplementedError

    def due_checks(self) -> Mapping[str, Any]:
        raise NotImplementedError

    async def check_one(self, key: str, check: Any) -> None:
        raise NotImplementedError

    def after_tick(self, now: float) -> None:
        """Called after each pass over the checks."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                now = trio.current_time()
                self.sync(now)
                for key, check in self.due_checks().items():
                    if key not in self.running and check.due(now):
                        check.started(now)
                        self.running.add(key)
                        nursery.start_soon(self._run_one, key, check)
                self.after_tick(now)
                await trio.sleep(TICK_S)

    async def _run_one(self, key: str, check: Any) -> None:
        try:
            await self.check_one(key, check)
        finally:
            self.running.discard(key)
