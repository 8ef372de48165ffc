"""The demo topology as data (pure): which clusters, zones, loopback addresses, ports and sample services.

Region `us-east`: cluster `east-1` (zones `us-east-1a`, `us-east-1b`) and `east-2` (`us-east-1c`);
region `eu-west`: cluster `west-1` (`eu-west-1a`). Cluster number N binds `127.0.N.x`: `.1` for its
gateway and control plane, `.10 + zone index` for its sample endpoints. `echo.demo` runs in every zone,
`hello.demo` only in `west-1`, `greeter.demo` (gRPC) in `east-2` and `west-1`.
"""

from __future__ import annotations

import attrs

TRUST_DOMAIN = "mesh.example"

# Default ports on each cluster's own loopback address; `plan()` moves off any that are taken.
EASTWEST_PORT = 15443
OUTBOUND_PORT = 15001
ADMIN_PORT = 15000
CONTROL_PORT = 15010
FEDERATION_PORT = 15011  # the control plane's mTLS crossing for peers
SERVICE_PORT = 8080
GRPC_PORT = 9090
PROMETHEUS_ADDRESS = ("127.0.0.1", 19090)


@attrs.frozen
class SampleEndpoint:
    service: str  # name.namespace
    protocol: str  # http | grpc
    zone: str
    host: str
    port: int


@attrs.frozen
class ClusterPlan:
    name: str
    region: str
    zones: tuple[str, ...]
    host: str  # the gateway's and control plane's loopback address
    eastwest: int
    outbound: int
    admin: int
    control: int
    federation: int
    endpoints: tuple[SampleEndpoint, ...]

    def address(self, port: int) -> str:
        return f"{self.host}:{port}"


# (name, region, zones, services per cluster)
CLUSTERS: tuple[tuple[str, str, tuple[str, ...], tuple[tuple[str, str], ...]], ...] = (
    ("east-1", "us-east", ("us-east-1a", "us-east-1b"), (("echo.demo", "http"),)),
    ("east-2", "us-east", ("us-east-1c",), (("echo.demo", "http"), ("greeter.demo", "grpc"))),
    ("west-1", "eu-west", ("eu-west-1a",), (("echo.demo", "http"), ("hello.demo", "http"), ("greeter.demo", "grpc"))),
)


def plan(is_free=lambda host, port: True) -> tuple[ClusterPlan, ...]:
    """The demo's clusters with concrete addresses; `is_free(host, port)` lets the caller avoid busy ports.

    A busy default port is replaced by the next free one above it on the same address, so two demos (or a
    demo beside another program) never collide.
    """

    def pick(host: str, port: int, taken: set[tuple[str, int]]) -> int:
        while (host, port) in taken or not is_free(host, port):
            port += 1
        taken.add((host, port))
        return port

    taken: set[tuple[str, int]] = set()
    plans = []
    for index, (name, region, zones, services) in enumerate(CLUSTERS, start=1):
        host = f"127.0.{index}.1"
        endpoints = []
        for zone_index, zone in enumerate(zones):
            ep_host = f"127.0.{index}.{10 + zone_index}"
            for service, protocol in services:
                # hello.demo and greeter.demo run once per cluster (its first zone); echo.demo in every zone.
                if service != "echo.demo" and zone_index > 0:
                    continue
                port = pick(ep_host, GRPC_PORT if protocol == "grpc" else SERVICE_PORT + (service == "hello.demo"), taken)
                endpoints.append(SampleEndpoint(service, protocol, zone, ep_host, port))
        plans.append(
            ClusterPlan(
                name=name,
                region=region,
                zones=zones,
                host=host,
                eastwest=pick(host, EASTWEST_PORT, taken),
                outbound=pick(host, OUTBOUND_PORT, taken),
                admin=pick(host, ADMIN_PORT, taken),
                control=pick(host, CONTROL_PORT, taken),
                federation=pick(host, FEDERATION_PORT, taken),
                endpoints=tuple(endpoints),
            )
        )
    return tuple(plans)
