"""Failover around a running gateway: the background loops that feed `gateway.lb`'s balancers.

`serve_failover(gateway, source)` runs, inside the gateway's nursery:
- the active health checks of local endpoints (`gateway.health_checks.HealthChecker`);
- the gateway-pair probes of every peer gateway (`gateway.probes.PeerProber`) and the answers to
  peers' probes on the east-west listener (`Proxy.probe_answer`);
- once a second, the failover metrics (METRICS.md "Failover and endpoints"): endpoints by state,
  active priority and its transitions, open circuit breakers, certificate expiry, and the age of
  a stale catalog (static stability: when the catalog source stops answering, the gateway keeps
  the last-known-good catalog, says how old it is, and warns once in the log).
It also makes outgoing connections bind the gateway's source address (`gateway.net.source_address_of`).

The balancers are the gateway's `BalancerSet` (its picker factory); with any other picker
factory the loops still run and only the metrics that need a balancer are skipped.
Never imports `federation`.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import trio

from gateway.health_checks import HealthChecker
from gateway.lb.balancer import BalancerSet
from gateway.lb.circuit import Resource
from gateway.lb.policy import ServicePolicy
from gateway.net import source_address_of
from gateway.probes import PeerProber, probe_answer

log = logging.getLogger("isthmus.gateway.failover")

METRICS_INTERVAL_S = 1.0
STALE_WARN_AFTER_S = 2.0


class Failover:
    """The failover state of one gateway: health checker, prober, and metric bookkeeping."""

    def __init__(self, gateway: Any, source: Any = None) -> None:
        self.gateway = gateway
        self.source = source
        factory = gateway.picker_factory
        self.balancer_set: BalancerSet | None = factory if isinstance(factory, BalancerSet) else None
        self.source_address = source_address_of(gateway.config)
        self.health = HealthChecker(
            cluster=gateway.config.cluster,
            catalog=lambda: gateway.catalog,
            policy_of=self.policy_of,
            balancers=self.balancers,
            source_address=self.source_address,
        )
        default = self.balancer_set.default if self.balancer_set is not None else ServicePolicy()
        self.prober = PeerProber(
            cluster=gateway.config.cluster,
            catalog=lambda: gateway.catalog,
            upstreams=gateway.upstreams,
            on_views=self.on_peer_views,
            policy=default.peer_probe,
        )
        self.active_priority: dict[str, int | None] = {}
        self.stale_warned = False

    def policy_of(self, service: str) -> ServicePolicy:
        if self.balancer_set is None:
            return ServicePolicy()
        return self.balancer_set.policies.get(service, self.balancer_set.default)

    def balancers(self) -> list[Any]:
        """Every balancer, built ahead of the first request (a routing table builds its pickers on
        first use), so health verdicts and probe views are in place before traffic arrives."""
        if self.balancer_set is None:
            return []
        table = self.gateway._table
        if table is not None:
            for service in table.catalog.services:
                for local_only in (False, True):
                    if table.endpoints(service, local_only=local_only):
                        table.picker(service, local_only=local_only)
        return self.balancer_set.balancers()

    def on_peer_views(self, views: dict, now: float) -> None:
        if self.balancer_set is not None:
            self.balancer_set.update_peers(views, now)

    def answer_probe(self, source_cluster: str | None) -> bytes:
        return probe_answer(self.gateway.catalog, self.gateway.config.cluster, source_cluster,
                            self.health.healthy, self.balancers())

    # -- metrics ------------------------------------------------------------------------------

    def refresh_metrics(self, now: float) -> None:
        metrics = self.gateway.metrics
        catalog = self.gateway.catalog
        self._stale(now)
        self._certificate(metrics)
        if catalog is None or self.balancer_set is None:
            return
        views = self.prober.views()
        outbound: dict[str, Any] = {}
        # The outbound view when there is one (it sees remote clusters), else the local-only one.
        for (service, _local_only), balancer in sorted(self.balancer_set._balancers.items()):
            outbound.setdefault(service, balancer)
        metrics.endpoints.clear()
        counts: dict[tuple[str, str, str, str], int] = {}
        for service, balancer in outbound.items():
            snapshot = balancer.snapshot(now)
            ejected = set(snapshot.ejected)
            unhealthy = set(snapshot.unhealthy)
            for endpoint in catalog.endpoints_of(service):
                key = balancer.key_of(endpoint.id) or endpoint.id
                view = views.get(endpoint.cluster)
                if key in ejected:
                    state = "ejected"
                elif endpoint.id in unhealthy or endpoint.health.value not in ("healthy", "unknown") or (
                        view is not None and not view.alive):
                    state = "unhealthy"
                else:
                    state = "healthy"
                label = (service, endpoint.cluster, str(endpoint.locality), state)
                counts[label] = counts.get(label, 0) + 1
            priority = snapshot.active_priority
            previous = self.active_priority.get(service)
            if service in self.active_priority and previous != priority:
                metrics.failover_transitions.labels(service, str(previous), str(priority)).inc()
            self.active_priority[service] = priority
            metrics.active_priority.labels(service).set(-1 if priority is None else priority)
            metrics.circuit_breakers_open.labels(service, "any").set(
                1 if balancer.breaker.is_open(Resource.REQUESTS) else 0
            )
        for label, count in counts.items():
            metrics.endpoints.labels(*label).set(count)

    def _stale(self, now: float) -> None:
        metrics = self.gateway.metrics
        since = getattr(self.source, "stale_since", None)
        reason = self.gateway.stale_reason
        if since is None and reason is None:
            metrics.catalog_stale.set(0)
            self.stale_warned = False
            return
        if since is None:
            since = getattr(self, "_stale_start", None)
            if since is None:
                since = self._stale_start = now
        age = max(0.0, now - since)
        metrics.catalog_stale.set(age)
        # A cached catalog is served for a moment at every start: warn once it has lasted.
        if not self.stale_warned and age >= STALE_WARN_AFTER_S:
            self.stale_warned = True
            revision = None if self.gateway.catalog is None else self.gateway.catalog.revision
            log.warning("catalog source unreachable for %.0f s: serving the last-known-good catalog (revision %s)",
                        age, revision)

    def _certificate(self, metrics: Any) -> None:
        identity = getattr(self.gateway.config, "identity", None)
        holder = getattr(self.gateway.contexts, "identity", None)
        identity = holder or identity
        not_after = getattr(identity, "not_after", None)
        if not_after is None:
            return
        left = (not_after - dt.datetime.now(dt.UTC)).total_seconds()
        metrics.certificate_expiry.labels(str(identity.spiffe_id)).set(left)

    async def _serve_metrics(self) -> None:
        while True:
            self.refresh_metrics(trio.current_time())
            await trio.sleep(METRICS_INTERVAL_S)


async def serve_failover(gateway: Any, source: Any = None, *,
                         task_status: trio.TaskStatus[Failover] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the failover loops of `gateway` (see the module docstring) until cancelled."""
    failover = Failover(gateway, source)
    if gateway.upstreams is not None:
        gateway.upstreams.source_address = failover.source_address
    if gateway.proxy is not None:
        gateway.proxy.probe_answer = failover.answer_probe
    async with trio.open_nursery() as nursery:
        await nursery.start(failover.health.run)
        await nursery.start(failover.prober.run)
        nursery.start_soon(failover._serve_metrics)
        task_status.started(failover)
