"""Active health checks of a gateway's local endpoints: the trio loop around `gateway.lb.health`.

Owns `HealthChecker`: one `ActiveHealthCheck` per local endpoint of the catalog in force (created
and dropped as catalogs change), each checked on its own phase within the interval: an HTTP/1.1
`GET <path>` on a fresh connection for `http` services, a TCP connect for `http2`, `grpc` and `tcp`
services or when the policy's path is empty. Any HTTP answer below 500 within `timeout_s` is
healthy: the check is on by default, and an application without the path (404) is alive; a 5xx
is the endpoint saying it is unwell, and silence or a refused connection is a dead endpoint.
Interval, timeout, thresholds and path come from the service's `HealthCheckPolicy`. Verdicts feed
every balancer of the service (`Balancer.set_endpoint_health`), and `healthy(endpoint_id)` answers
the gateway-pair probes (`gateway.probes`).

The state machine is pure (`gateway.lb.health`); this module only sends checks and records results.
Never imports `federation`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import h11
import trio

from gateway.errors import UpstreamConnectError
from gateway.lb.health import ActiveHealthCheck, EndpointMarkedHealthy, EndpointMarkedUnhealthy
from gateway.lb.policy import HealthCheckPolicy, ServicePolicy
from gateway.net import SocketIO, connect
from gateway.periodic import PeriodicChecks
from registry.model import Catalog, Endpoint

log = logging.getLogger("isthmus.gateway.health")



async def check_endpoint(endpoint: Endpoint, protocol: str, policy: HealthCheckPolicy, *,
                         source_address: str | None = None) -> bool:
    """One check, bounded by `policy.timeout_s`: True when the endpoint answered as healthy."""
    with trio.move_on_after(policy.timeout_s):
        try:
            stream = await connect(endpoint.address, endpoint.port, timeout_s=policy.timeout_s,
                                   local_address=source_address)
        except UpstreamConnectError:
            return False
        try:
            if protocol != "http" or not policy.path:
                return True
            return await _http_get(stream, endpoint, policy.path)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError, OSError):
            return False
        finally:
            await trio.aclose_forcefully(stream)
    return False


async def _http_get(stream: SocketIO, endpoint: Endpoint, path: str) -> bool:
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(method="GET", target=path, headers=[
        ("host", f"{endpoint.address}:{endpoint.port}"), ("user-agent", "isthmus-health-check"),
        ("connection", "close"),
    ])
    await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(16384)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Response):
            return event.status_code < 500
        if isinstance(event, h11.ConnectionClosed):
            return False


class HealthChecker(PeriodicChecks):
    """Active checks of every local endpoint in the catalog in force (see the module docstring)."""

    def __init__(self, *, cluster: str, catalog: Callable[[], Catalog | None],
                 policy_of: Callable[[str], ServicePolicy], balancers: Callable[[], list[Any]],
                 source_address: str | None = None, rng: random.Random | None = None,
                 check: Callable[..., Any] = check_endpoint) -> None:
        self.cluster = cluster
        self.catalog = catalog
        self.policy_of = policy_of
        self.balancers = balancers
        self.source_address = source_address
        self.rng = rng or random.Random()
        self.check = check
        self.checks: dict[str, ActiveHealthCheck] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self.running: set[str] = set()
        self.events: list[object] = []

    def healthy(self, endpoint_id: str) -> bool:
        check = self.checks.get(endpoint_id)
        return check is None or check.healthy

    def sync(self, now: float) -> None:
        """Follow the catalog: a check per local endpoint, new ones spread over their interval."""
        catalog = self.catalog()
        if catalog is None:
            return
        local = {e.id: e for e in catalog.endpoints.values() if e.cluster == self.cluster}
        for endpoint_id in list(self.checks):
            if endpoint_id not in local:
                del self.checks[endpoint_id]
                self.endpoints.pop(endpoint_id, None)
        for endpoint_id, endpoint in local.items():
            policy = self.policy_of(endpoint.service).health_check
            check = self.checks.get(endpoint_id)
            if check is None or check.policy != policy:
                self.checks[endpoint_id] = ActiveHealthCheck(
                    endpoint_id, policy, now=now, phase_s=self.rng.random() * policy.interval_s
                )
            self.endpoints[endpoint_id] = endpoint

    def apply(self, now: float) -> None:
        """Hand every verdict to every balancer of its service (a no-op where nothing changed)."""
        by_service: dict[str, list[tuple[str, bool]]] = {}
        for endpoint_id, check in self.checks.items():
            endpoint = self.endpoints[endpoint_id]
            by_service.setdefault(endpoint.service, []).append((endpoint_id, check.healthy))
        for balancer in self.balancers():
            for endpoint_id, ok in by_service.get(balancer.service, ()):
                balancer.set_endpoint_health(endpoint_id, ok, now)

    def due_checks(self) -> dict[str, ActiveHealthCheck]:
        return self.checks

    def after_tick(self, now: float) -> None:
        self.apply(now)

    async def check_one(self, endpoint_id: str, check: ActiveHealthCheck) -> None:
        endpoint = self.endpoints[endpoint_id]
        catalog = self.catalog()
        service = None if catalog is None else catalog.services.get(endpoint.service)
        protocol = "http" if service is None else service.protocol
        ok = await self.check(endpoint, protocol, check.policy, source_address=self.source_address)
        event = check.record(ok, trio.current_time())
        if isinstance(event, EndpointMarkedUnhealthy):
            log.warning("endpoint %s failed %d active checks: out of rotation", endpoint_id, check.failures)
        elif isinstance(event, EndpointMarkedHealthy):
            log.info("endpoint %s passes its active checks again", endpoint_id)
        if event is not None:
            self.events.append(event)
            self.apply(trio.current_time())
