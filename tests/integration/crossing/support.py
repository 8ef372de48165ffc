"""Clusters for crossing tests: a real control plane and a real gateway each, in this trio run.

`cluster_config` binds each cluster to its own loopback address with free ports; `Cluster` starts
and stops its control plane (a partition) and its gateway independently.
"""

from __future__ import annotations

import httpx
import trio

from federation.commands.gateway import serve_cluster_gateway
from federation.config import ClusterConfig
from federation.control import ControlPlane
from registry.model import Locality
from tests.conftest import free_port

CLUSTERS = {"east-1": ("us-east", "us-east-1a"), "east-2": ("us-east", "us-east-1c"), "west-1": ("eu-west", "eu-west-1a")}
HOSTS = {"east-1": "127.0.1.1", "east-2": "127.0.3.1", "west-1": "127.0.2.1"}
FAST = dict(heartbeat_s=0.3, idle_timeout_s=2.0, probe_interval_s=0.5)


def cluster_config(tmp_path, name, pki_dir):
    host = HOSTS[name]
    region, zone = CLUSTERS[name]

    def address() -> str:
        return f"{host}:{free_port(host)}"

    return ClusterConfig.from_mapping(
        {
            "cluster": {"name": name, "region": region, "zones": [zone]},
            "pki": {"dir": str(pki_dir)},
            "registry": {"url": f"sqlite:///{tmp_path / name / 'registry.db'}"},
            "gateway": {"eastwest": address(), "outbound": address(), "admin": address()},
            "control": {"api": address(), "federation": address()},
        },
        base_dir=tmp_path / name,
    )


async def wait_for(predicate, what, within_s=15):
    with trio.fail_after(within_s):
        while not predicate():  # noqa: ASYNC110 - polling state with a deadline
            await trio.sleep(0.05)


def endpoints_of(plane, service, cluster):
    current = plane.catalogs.current
    return {} if current is None else {
        e.id: e for e in current.endpoints.values() if e.service == service and e.cluster == cluster
    }


async def scrape(address: str, path: str = "/metrics") -> dict[str, float]:
    """A Prometheus text page as {'name{labels}': value}."""
    async with httpx.AsyncClient(trust_env=False) as client:
        text = (await client.get(f"http://{address}{path}")).text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line and not line.startswith("#")}


def forwarded_calls(metrics: dict[str, float], source: str, code: str = "200") -> float:
    """Federation calls a gateway forwarded to its control plane from cluster `source`."""
    return sum(v for k, v in metrics.items() if k.startswith("isthmus_requests_total{")
               and 'destination_service="federation.isthmus"' in k and f'source_cluster="{source}"' in k
               and f'response_code="{code}"' in k)  # fmt: skip


class Cluster:
    """One cluster's control plane and gateway, each in its own cancel scope."""

    def __init__(self, nursery, config, backend, **plane_options):
        self.nursery, self.config, self.backend = nursery, config, backend
        self.plane_options = plane_options or FAST
        self.plane = None
        self.gateway = None
        self._plane_scope = self._gateway_scope = None

    @property
    def name(self):
        return self.config.cluster.name

    async def start(self):
        await self.start_control()
        await self.start_gateway()
        return self

    async def start_control(self, backend=None):
        self.backend = backend or self.backend

        async def run(task_status=trio.TASK_STATUS_IGNORED):
            with trio.CancelScope() as scope:
                self._plane_scope = scope
                plane = ControlPlane(self.config, self.backend, **self.plane_options)
                await plane.serve(task_status=task_status)

        self.plane = await self.nursery.start(run)
        return self.plane

    async def start_gateway(self):
        """What `isthmus gateway --config` runs (`federation.commands.gateway`), in this trio run."""

        async def run(task_status=trio.TASK_STATUS_IGNORED):
            with trio.CancelScope() as scope:
                self._gateway_scope = scope
                await serve_cluster_gateway(self.config, task_status=task_status)

        self.gateway = await self.nursery.start(run)
        return self.gateway

    def stop_control(self):
        self._plane_scope.cancel()

    def stop_gateway(self):
        self._gateway_scope.cancel()


async def linked_control_planes(nursery, tmp_path, pki_dir) -> list[str]:
    """east-1 and west-1, each a control plane and a gateway, linked by a token, west-1 importing an
    exported `echo.demo` and both probing the other; returns their `control.api` addresses."""
    from federation.control import issue_peering_token
    from registry.model import Endpoint, Export, Service
    from registry.store import Store
    from registry.testing import FakeBackend

    east = await Cluster(nursery, cluster_config(tmp_path, "east-1", pki_dir), FakeBackend()).start()
    west = await Cluster(nursery, cluster_config(tmp_path, "west-1", pki_dir), FakeBackend()).start()
    store = Store(east.backend)
    region, zone = CLUSTERS["east-1"]
    await store.register_endpoints(Service.from_key("echo.demo"), [Endpoint("echo.demo", "east-1", "127.0.1.10", 8080, Locality(region, zone))])
    await store.set_export("east-1", Export("echo.demo", ("*",)))
    token, _ = issue_peering_token(east.config, "west-1", 900)
    await west.plane.register_with_token(token)
    await wait_for(lambda: endpoints_of(west.plane, "echo.demo", "east-1"), "west-1 imports echo.demo")
    await wait_for(lambda: all((p := a.plane.probes.get(b.name)) is not None and p.rtt_s and not p.error
                               for a, b in ((east, west), (west, east))), "probes answered")  # fmt: skip
    return [east.config.control_api, west.config.control_api]
