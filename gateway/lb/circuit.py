"""The circuit breaker of one upstream cluster (one service): connections, pending and active requests.

Envoy's circuit breaking (envoyproxy.io, intro/arch_overview/upstream/circuit_breaking): each
resource has a limit, and a request, connection or queued request over the limit fails at once
(here: `gateway.errors.Overloaded`, 503 `overflow`) instead of waiting behind a stalled upstream.

Each resource is its own two-state machine (the linkerd2-proxy habit: every transition written
down):

    state   input                        effect                         next
    CLOSED  acquire, count+1 < limit     count += 1, admitted           CLOSED
    CLOSED  acquire, count+1 == limit    count += 1, admitted           OPEN    (CircuitOpened)
    OPEN    acquire                      rejected, rejections += 1      OPEN
    OPEN    release, count-1 < limit     count -= 1                     CLOSED  (CircuitClosed)
    CLOSED  release                      count -= 1 (never below 0)     CLOSED

OPEN means "the next acquire is rejected"; the circuit closes as soon as one unit is released.
Limits and their reasons: `CircuitBreakerPolicy`. Pure: no trio, no clock reads.
"""

from __future__ import annotations

import enum

import attrs

from gateway.errors import Overloaded
from gateway.lb.policy import CircuitBreakerPolicy


class Resource(enum.StrEnum):
    CONNECTIONS = "connections"
    PENDING = "pending"
    REQUESTS = "requests"


@attrs.frozen
class CircuitOpened:
    cluster: str
    resource: Resource
    at: float


@attrs.frozen
class CircuitClosed:
    cluster: str
    resource: Resource
    at: float


class CircuitBreaker:
    """Counters and open/closed state per resource for one upstream cluster."""

    def __init__(self, cluster: str, policy: CircuitBreakerPolicy | None = None) -> None:
        self.cluster = cluster
        self.policy = policy or CircuitBreakerPolicy()
        self.counts = {r: 0 for r in Resource}
        self.rejections = {r: 0 for r in Resource}
        self.events: list[CircuitOpened | CircuitClosed] = []

    def limit(self, resource: Resource) -> int:
        return {
            Resource.CONNECTIONS: self.policy.max_connections,
            Resource.PENDING: self.policy.max_pending_requests,
            Resource.REQUESTS: self.policy.max_requests,
        }[resource]

    def is_open(self, resource: Resource) -> bool:
        return self.counts[resource] >= self.limit(resource)

    def try_acquire(self, resource: Resource, now: float) -> bool:
        if self.is_open(resource):
            self.rejections[resource] += 1
            return False
        self.counts[resource] += 1
        if self.is_open(resource):
            self.events.append(CircuitOpened(self.cluster, resource, now))
        return True

    def acquire(self, resource: Resource, now: float) -> None:
        """`try_acquire`, raising `Overloaded` (503 `overflow`) when the circuit is open."""
        if not self.try_acquire(resource, now):
            raise Overloaded(f"{self.cluster}: circuit open: {resource} at limit {self.limit(resource)}")

    def release(self, resource: Resource, now: float) -> None:
        was_open = self.is_open(resource)
        self.counts[resource] = max(0, self.counts[resource] - 1)
        if was_open and not self.is_open(resource):
            self.events.append(CircuitClosed(self.cluster, resource, now))

    def drain_events(self) -> list[CircuitOpened | CircuitClosed]:
        events, self.events = self.events, []
        return events

    def __repr__(self) -> str:
        state = ", ".join(f"{r}={self.counts[r]}/{self.limit(r)}" for r in Resource)
        return f"<CircuitBreaker {self.cluster} {state}>"
