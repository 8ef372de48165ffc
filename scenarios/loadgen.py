"""The drills' built-in load generator: open-loop HTTP (and gRPC-over-gateway) load under trio.

Requests start on a fixed schedule (`rate_per_s`), bounded by `concurrency`, so a slow upstream shows as
latency and queueing rather than silently lowering the offered load. Each request becomes one
`analysis.Sample`; a live `LoadStats` lets a progress line show rps, success and p99 as the drill runs.
"""

from __future__ import annotations

import random
from collections import deque

import attrs
import httpx
import trio

from scenarios.analysis import Sample, percentile
from scenarios.model import Load


@attrs.define
class LoadStats:
    recent: deque = attrs.field(factory=lambda: deque(maxlen=2000))
    sent: int = 0
    failed: int = 0

    def add(self, sample: Sample) -> None:
        self.recent.append(sample)
        self.sent += 1
        self.failed += not sample.ok

    def line(self, now_s: float, window_s: float = 2.0) -> str:
        window = [s for s in self.recent if s.start_s >= now_s - window_s]
        if not window:
            return "no requests yet"
        ok = sum(s.ok for s in window)
        p99 = percentile([s.latency_s * 1000 for s in window], 99)
        return f"{len(window) / window_s:6.0f} rps  success {ok / len(window):7.2%}  p99 {p99:7.1f} ms  failed total {self.failed}"


async def run_load(
    load: Load,
    outbound: str,
    duration_s: float,
    samples: list[Sample],
    stats: LoadStats,
    *,
    seed: int = 1,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Send `load` to the caller cluster's outbound listener (`host:port`) for `duration_s` seconds."""
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=load.concurrency, max_keepalive_connections=load.concurrency)
    started = trio.current_time()
    slots = trio.Semaphore(load.concurrency)
    async with httpx.AsyncClient(base_url=f"http://{outbound}", limits=limits, timeout=load.timeout_s) as client:

        async def one(idempotent: bool, slot_held: bool) -> None:
            t0 = trio.current_time()
            status, cluster, zone, reason = 0, "", "", ""
            try:
                method = "GET" if idempotent else "POST"
                response = await client.request(method, "/drill", headers={"host": load.service}, content=None if idempotent else b"x")
                status = response.status_code
                cluster = response.headers.get("x-isthmus-cluster", "")
                zone = response.headers.get("x-demo-zone", "")
                reason = response.headers.get("x-isthmus-reason", "")
            except httpx.HTTPError as exc:
                reason = type(exc).__name__
            finally:
                if slot_held:
                    slots.release()
            sample = Sample(
                start_s=t0 - started, latency_s=trio.current_time() - t0, ok=200 <= status < 300, status=status,
                idempotent=idempotent, cluster=cluster, zone=zone, reason=reason,
            )
            samples.append(sample)
            stats.add(sample)

        task_status.started()
        async with trio.open_nursery() as nursery:
            interval = 1.0 / load.rate_per_s
            n = 0
            while True:
                at = started + n * interval
                if at - started >= duration_s:
                    break
                await trio.sleep_until(at)
                await slots.acquire()
                nursery.start_soon(one, rng.random() < load.idempotent_share, True)
                n += 1
