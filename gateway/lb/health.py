"""Active health-check state of local endpoints, and gateway-pair probe state of peer gateways.

Both are small state machines: results go in (`record(ok, now)`), state and past-tense events come
out. The trio shell sends the check or probe when `due(now)` says so, puts `fail_after(timeout_s)`
on it and records a timeout as a failure; nothing here sleeps or reads a clock.

Active checks (Envoy's health checking, envoyproxy.io intro/arch_overview/upstream/health_checking):
`unhealthy_threshold` consecutive failures mark an endpoint unhealthy, `healthy_threshold`
consecutive successes mark it healthy again. Defaults and their reasons: `HealthCheckPolicy`.

Gateway-pair probes: every gateway probes every peer gateway; a probe answer carries the peer's
per-service healthy-endpoint counts, so a caller weighs a remote cluster by its healthy backends.
`dead_after_misses` consecutive misses mark the peer dead (out of rotation); its RTT is an EWMA
that orders regions no failover policy lists. Defaults and their reasons: `PeerProbePolicy`.

Pure: no trio, no clock reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import attrs

from gateway.lb.policy import HealthCheckPolicy, PeerProbePolicy


@attrs.frozen
class EndpointMarkedUnhealthy:
    key: str
    at: float


@attrs.frozen
class EndpointMarkedHealthy:
    key: str
    at: float


@attrs.frozen
class PeerMarkedDead:
    cluster: str
    at: float


@attrs.frozen
class PeerMarkedAlive:
    cluster: str
    at: float


class ActiveHealthCheck:
    """One local endpoint's active-check state. It starts healthy (see `HealthCheckPolicy`)."""

    def __init__(
        self, key: str, policy: HealthCheckPolicy | None = None, *, now: float = 0.0, phase_s: float = 0.0
    ):
        self.key = key
        self.policy = policy or HealthCheckPolicy()
        self.healthy = True
        self.failures = 0
        self.successes = 0
        # A per-endpoint phase spreads checks over the interval instead of bursting them.
        self.next_check_at = now + phase_s

    def due(self, now: float) -> bool:
        return self.policy.enabled and now >= self.next_check_at

    def started(self, now: float) -> float:
        """A check was sent at `now`: schedules the next one, returns this one's deadline."""
        self.next_check_at = now + self.policy.interval_s
        return now + self.policy.timeout_s

    def record(self, ok: bool, now: float) -> EndpointMarkedHealthy | EndpointMarkedUnhealthy | None:
        if ok:
            self.failures = 0
            self.successes += 1
            if not self.healthy and self.successes >= self.policy.healthy_threshold:
                self.healthy = True
                return EndpointMarkedHealthy(self.key, now)
            return None
        self.successes = 0
        self.failures += 1
        if self.healthy and self.failures >= self.policy.unhealthy_threshold:
            self.healthy = False
            return EndpointMarkedUnhealthy(self.key, now)
        return None


@attrs.frozen
class PeerView:
    """What the probes say about one peer gateway, as the balancer consumes it."""

    cluster: str
    alive: bool = True
    rtt_s: float | None = None
    healthy: Mapping[str, int] = attrs.field(factory=dict, converter=lambda m: MappingProxyType(dict(m)))

    def healthy_count(self, service: str) -> int | None:
        """Healthy endpoints of `service` behind this gateway, or None when the peer did not say."""
        return self.healthy.get(service)


class PeerProbe:
    """Probe state for one peer gateway. It starts alive: a restart must not drop remote clusters."""

    def __init__(self, cluster: str, policy: PeerProbePolicy | None = None, *, now: float = 0.0):
        self.cluster = cluster
        self.policy = policy or PeerProbePolicy()
        self.alive = True
        self.misses = 0
        self.successes = 0
        self.rtt_s: float | None = None
        self.healthy: dict[str, int] = {}
        self.last_success_at: float | None = None
        self.next_probe_at = now

    def due(self, now: float) -> bool:
        return now >= self.next_probe_at

    def started(self, now: float) -> float:
        """A probe was sent at `now`: schedules the next one, returns this one's deadline."""
        self.next_probe_at = now + self.policy.interval_s
        return now + self.policy.timeout_s

    def record_success(
        self, now: float, rtt_s: float, healthy: Mapping[str, int] | None = None
    ) -> PeerMarkedAlive | None:
        self.misses = 0
        self.successes += 1
        self.last_success_at = now
        alpha = self.policy.rtt_alpha
        self.rtt_s = rtt_s if self.rtt_s is None else alpha * rtt_s + (1 - alpha) * self.rtt_s
        if healthy is not None:
            self.healthy = {str(k): max(0, int(v)) for k, v in healthy.items()}
        if not self.alive and self.successes >= self.policy.alive_after_successes:
            self.alive = True
            return PeerMarkedAlive(self.cluster, now)
        return None

    def record_failure(self, now: float) -> PeerMarkedDead | None:
        """A probe timed out or failed (connect refused, TLS rejected, bad answer)."""
        self.successes = 0
        self.misses += 1
        if self.alive and self.misses >= self.policy.dead_after_misses:
            self.alive = False
            return PeerMarkedDead(self.cluster, now)
        return None

    def view(self) -> PeerView:
        return PeerView(self.cluster, self.alive, self.rtt_s, self.healthy)
