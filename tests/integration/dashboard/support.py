"""A live mesh for the dashboard's tests: the gateway topology of `tests.integration.gateway.support`
(east-1 calling west-1 over mutual TLS), traffic driven through it, and the dashboard served by
hypercorn's trio worker, scraping the gateways' admin `/metrics`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from federation.dashboard.app import make_dashboard
from federation.dashboard.model import MeshModel, Target
from registry.model import Endpoint
from tests.conftest import free_port
from tests.integration.gateway.support import EAST, Topology, open_topology

HOSTILE = "<img src=x onerror=alert(1)>"


def gateway_targets(topology: Topology) -> list[Target]:
    east = topology.east.addresses["admin"]
    west = topology.west.addresses["admin"]
    return [
        Target("gateway east-1", "gateway", "east-1", url=f"http://{east[0]}:{east[1]}/metrics", region="us-east",
               zones=("us-east-1a",)),
        Target("gateway west-1", "gateway", "west-1", url=f"http://{west[0]}:{west[1]}/metrics", region="eu-west",
               zones=("eu-west-1a",)),
    ]


def dead_target() -> Target:
    """A gateway that does not answer (nothing listens on its admin port)."""
    return Target("gateway east-2", "gateway", "east-2", url=f"http://127.0.0.1:{free_port('127.0.0.1')}/metrics",
                  region="us-east", zones=("us-east-1c",))


def control_target(hostile: bool = False) -> Target:
    """The control plane's own metrics, rendered in process: cluster info and peer probes (the control
    plane exports these per METRICS.md; until it does, this stands in for it), and optionally a
    service whose name is HTML."""
    lines = [
        "# TYPE isthmus_cluster_info gauge",
        'isthmus_cluster_info{cluster="east-1",region="us-east",zones="us-east-1a"} 1',
        'isthmus_cluster_info{cluster="west-1",region="eu-west",zones="eu-west-1a"} 1',
        'isthmus_cluster_info{cluster="east-2",region="us-east",zones="us-east-1c"} 1',
        "# TYPE isthmus_peer_probe_up gauge",
        'isthmus_peer_probe_up{source_cluster="east-1",destination_cluster="west-1"} 1',
        'isthmus_peer_probe_up{source_cluster="east-1",destination_cluster="east-2"} 0',
        "# TYPE isthmus_peer_probe_rtt_seconds gauge",
        'isthmus_peer_probe_rtt_seconds{source_cluster="east-1",destination_cluster="west-1"} 0.0042',
    ]
    state = {"n": 0}

    def render() -> bytes:
        text = list(lines)
        if hostile:
            state["n"] += 7
            text += ["# TYPE isthmus_requests_total counter",
                     f'isthmus_requests_total{{source_cluster="east-1",destination_cluster="east-1",'
                     f'destination_service="{HOSTILE}",response_code="200",request_protocol="http",reason=""}} '
                     f'{state["n"]}']  # fmt: skip
        return ("\n".join(text) + "\n").encode()

    return Target("control east-1", "control", "east-1", region="us-east", zones=("us-east-1a",), render=render)


def east_local_catalog(topology: Topology) -> Any:
    """east-1's catalog with `echo.demo` served by a local east-1 endpoint (same zone: no crossing)."""
    local = Endpoint("echo.demo", "east-1", "127.0.0.1", topology.ports["http"], EAST, id="east-1/echo")
    return attrs.evolve(topology.east_catalog, revision=2, endpoints={local.id: local})


def zone_lost_catalog(topology: Topology) -> Any:
    """east-1's catalog once its zone's `echo.demo` endpoint is gone: only west-1 serves it."""
    return attrs.evolve(topology.east_catalog, revision=3)


async def drive_traffic(topology: Topology, *, period_s: float = 0.02) -> None:
    """Requests through east-1's outbound listener until cancelled: echo (200), a 500, no endpoint (503)."""
    async with httpx.AsyncClient(base_url=topology.outbound, timeout=5) as client:
        n = 0
        while True:
            n += 1
            if n % 10 == 0:
                await client.get("/status/500", headers={"host": "echo.demo"})
            elif n % 10 == 5:
                await client.get("/", headers={"host": "nowhere.demo"})
            else:
                await client.get("/headers", headers={"host": "echo.demo"})
            await trio.sleep(period_s)


@attrs.define
class LiveDashboard:
    topology: Topology
    url: str
    model: MeshModel


@asynccontextmanager
async def open_live_dashboard(pki: Any, *, extra_targets: list[Target] | None = None) -> AsyncIterator[LiveDashboard]:
    """The topology, traffic, and the dashboard on hypercorn (trio worker) scraping every second."""
    async with open_topology(pki) as topology, trio.open_nursery() as nursery:
        targets = gateway_targets(topology) + list(extra_targets or [])
        model = MeshModel()
        app, scraper = make_dashboard(lambda: targets, model=model)
        config = HypercornConfig()
        port = free_port("127.0.0.1")
        config.bind = [f"127.0.0.1:{port}"]
        config.accesslog = None
        config.errorlog = None
        config.graceful_timeout = 0.5
        await nursery.start(hypercorn_serve, app, config)
        await nursery.start(scraper)
        nursery.start_soon(drive_traffic, topology)
        yield LiveDashboard(topology, f"http://127.0.0.1:{port}", model)
        nursery.cancel_scope.cancel()


async def overview_until(url: str, predicate: Any, timeout_s: float = 10.0) -> dict[str, Any]:
    """Poll `/api/v1/overview` until `predicate(view)` holds (no fixed sleeps); fail after the deadline."""
    view: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=5) as client:
        try:
            with trio.fail_after(timeout_s):
                while True:
                    view = (await client.get(f"{url}/api/v1/overview")).json()
                    if predicate(view):
                        return view
                    await trio.sleep(0.2)
        except trio.TooSlowError:
            raise AssertionError(f"overview never satisfied the condition: {view}") from None


def service(view: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((s for s in view["services"] if s["name"] == name), None)
