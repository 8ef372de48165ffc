"""The seam between the gateway's I/O and endpoint choice: the `Picker` protocol and a simple picker.

`Picker` has the two methods of `gateway.lb`'s `Balancer` (`pick(now, rng, exclude=())` and
`report(endpoint_id, outcome, now)`), so the routing table can build either. `RoundRobinPicker`
round-robins over usable endpoints, preferring the gateway's own cluster (then its zone) and
spilling to remote clusters only when no local endpoint is usable.

Pure: no trio, no clock reads (`now` and `rng` are arguments).
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from typing import Protocol

from gateway.errors import NoHealthyEndpoint
from registry.model import Endpoint, Health, Locality

USABLE = (Health.HEALTHY, Health.UNKNOWN)


class Picker(Protocol):
    def pick(self, now: float, rng: random.Random, exclude: Collection[str] = ()) -> Endpoint: ...

    def report(self, endpoint_id: str, outcome: str, now: float) -> None: ...


class RoundRobinPicker:
    """Round-robin within the best non-empty tier: same cluster and zone, same cluster, other clusters."""

    def __init__(self, endpoints: Sequence[Endpoint], *, cluster: str, locality: Locality | None = None) -> None:
        usable = [e for e in endpoints if e.health in USABLE]
        same_zone = [e for e in usable if e.cluster == cluster and e.locality == locality]
        same_cluster = [e for e in usable if e.cluster == cluster and e.locality != locality]
        remote = sorted((e for e in usable if e.cluster != cluster), key=lambda e: (e.cluster, e.id))
        self.tiers: tuple[tuple[Endpoint, ...], ...] = tuple(
            tuple(t) for t in (same_zone, same_cluster, remote) if t
        )
        self._next = 0

    def pick(self, now: float, rng: random.Random, exclude: Collection[str] = ()) -> Endpoint:
        for tier in self.tiers:
            candidates = [e for e in tier if e.id not in exclude] if exclude else tier
            if candidates:
                self._next += 1
                return candidates[self._next % len(candidates)]
        raise NoHealthyEndpoint("no usable endpoint")

    def report(self, endpoint_id: str, outcome: str, now: float) -> None:
        """Outcomes are ignored by round-robin; `gateway.lb` balancers act on them."""

    def __repr__(self) -> str:
        return f"<RoundRobinPicker tiers={[len(t) for t in self.tiers]}>"
