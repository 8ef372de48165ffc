"""Real processes on loopback: the demo's three clusters in two regions, steady GETs from east-1,
then every endpoint of east-1's own zone killed, then a whole cluster (east-2, gateway included),
then the zone restarted: no GET fails, and traffic returns to the local zone."""

from __future__ import annotations

import pytest
import trio

from federation.demo.orchestrator import demo_down, demo_up
from scenarios.faults import Injector
from scenarios.loadgen import LoadStats, run_load
from scenarios.model import Load

pytestmark = pytest.mark.slow

RATE_PER_S = 80.0


def zone_share(samples, start_s: float, end_s: float, zone: str) -> float:
    window = [s for s in samples if start_s <= s.start_s < end_s and s.ok]
    return sum(s.zone == zone for s in window) / max(1, len(window))


async def test_zone_then_cluster_loss_cost_no_get_and_traffic_comes_home(tmp_path):
    demo_dir = tmp_path / "demo"
    state = await demo_up(demo_dir, bare=False)
    try:
        east1 = state.cluster("east-1")
        injector = Injector(demo_dir, state)
        zone = injector.endpoint_roles({"cluster": "east-1", "zone": "us-east-1a"})
        cluster = injector.roles(lambda role, info: role.startswith("east-2/") and not role.endswith("/control"))
        assert zone and any(role.endswith("/gateway") for role in cluster)
        samples: list = []
        load = Load(from_cluster="east-1", service="echo.demo", rate_per_s=RATE_PER_S, concurrency=16)
        async with trio.open_nursery() as nursery:
            await nursery.start(run_load, load, east1["outbound"], 14.0, samples, LoadStats())
            await trio.sleep(2.0)
            injector.kill(zone)  # t = 2 s: us-east-1a is gone
            await injector.wait_dead(zone)
            await trio.sleep(2.0)
            injector.kill(cluster)  # t = 4 s: east-2 is gone, gateway included
            await injector.wait_dead(cluster)
            await trio.sleep(2.0)
            injector.restart(zone)  # t = 6 s: us-east-1a comes back
        assert len(samples) > 0.9 * RATE_PER_S * 14
        failed = [s for s in samples if not s.ok]
        assert not failed, f"{len(failed)} failed: {sorted({(s.status, s.reason) for s in failed})}"
        assert sum(s.ok for s in samples) / len(samples) >= 0.999
        assert zone_share(samples, 0.5, 2.0, "us-east-1a") > 0.95  # steady state: the local zone
        assert zone_share(samples, 3.0, 4.0, "us-east-1a") == 0
        # Back home once the restarted endpoints pass their checks and their ejection has ended.
        assert zone_share(samples, 12.5, 14.0, "us-east-1a") > 0.9
    finally:
        await demo_down(demo_dir)
