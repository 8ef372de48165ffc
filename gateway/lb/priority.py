"""Locality priorities and Envoy's priority-load arithmetic (spill-over and panic).

Priorities are computed from the caller's locality (DESIGN: failover happens at the caller, once):

- P0: the caller's own zone (same region and zone);
- P1: the caller's region, other zones (the caller's cluster or a remote cluster in the region);
- P2, P3, ...: one level per other region, first those the service's failover policy lists, in
  its order, then the rest by measured gateway round-trip time (unknown RTT last, then by name).

The load each level receives follows Envoy's "priority levels" and "panic threshold" docs
(envoyproxy.io, intro/arch_overview/upstream/load_balancing/priority and panic_threshold), with
the integer arithmetic of Envoy's `LoadBalancerBase::recalculatePerPriorityState`:

    health(P)    = min(100, 140 * healthy(P) // total(P))       (overprovisioning factor 1.4)
    normalized   = min(100, sum of health(P))
    load(P0)     = min(100, health(P0) * 100 // normalized)
    load(PX)     = min(100 - sum of load(P0..PX-1), health(PX) * 100 // normalized)
    rounding remainder -> the first level with health > 0
    normalized == 0 -> all load to P0 (here: the first level that has hosts), in panic

The factor 1.4 assumes each level is provisioned for 1.4x its share, so losing up to ~28 % of a
level's hosts moves nothing (a zone losing one pod of five keeps its traffic local). A level is
in panic when `normalized < 100` and fewer than `panic_threshold_percent` of its hosts
are healthy: it then balances over all its hosts, healthy or not, so that the survivors are not
crushed by the load of the dead (Envoy's cascade guard). Threshold 0 disables panic.

Where the docs' tables differ from this arithmetic it is because the tables round real-valued
shares (e.g. P0/P1/P2 = 25 %/25 %/20 % healthy: the docs print 36/36/28, Envoy's integer code and
this module give 37/35/28); the unit tests carry both columns.

Pure: no trio, no clock, no I/O.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence

import attrs

from registry.model import Locality

SAME_ZONE = 0
SAME_REGION = 1
FIRST_OTHER_REGION = 2


def region_order(
    caller_region: str,
    regions: Iterable[str],
    failover: Sequence[str] = (),
    rtt_s: Mapping[str, float] | None = None,
) -> tuple[str, ...]:
    """The other regions in failover order: those `failover` lists (in its order), then by RTT, then name."""
    rtt_s = rtt_s or {}
    others = {r for r in regions if r != caller_region}
    listed = [r for r in dict.fromkeys(failover) if r in others]
    rest = sorted(others.difference(listed), key=lambda r: (rtt_s.get(r, math.inf), r))
    return tuple(listed) + tuple(rest)


def priority_of(caller: Locality, locality: Locality, order: Sequence[str]) -> int:
    """The priority level of `locality` as seen from `caller`, given the other regions' `order`."""
    if locality.region == caller.region:
        return SAME_ZONE if locality.zone == caller.zone else SAME_REGION
    try:
        return FIRST_OTHER_REGION + list(order).index(locality.region)
    except ValueError:
        return FIRST_OTHER_REGION + len(order)


def level_health(healthy: int, total: int, overprovisioning_factor: float = 1.4) -> int:
    """Envoy's integer health score of one level: min(100, factor% * healthy // total)."""
    if total <= 0:
        return 0
    factor_percent = round(overprovisioning_factor * 100)
    return min(100, factor_percent * max(0, healthy) // total)


@attrs.frozen
class PriorityLoad:
    """What the arithmetic decided for each level: load percent, health score and panic."""

    loads: tuple[int, ...]
    health: tuple[int, ...]
    normalized_total_health: int
    panic: tuple[bool, ...]

    @property
    def active_priority(self) -> int | None:
        """The first level that receives load (for the "active priority" metric)."""
        for level, load in enumerate(self.loads):
            if load > 0:
                return level
        return None


def priority_load(
    levels: Sequence[tuple[int, int]],
    *,
    overprovisioning_factor: float = 1.4,
    panic_threshold_percent: float = 50.0,
) -> PriorityLoad:
    """Loads for levels given as `(healthy, total)` pairs, P0 first (see the module docstring)."""
    health = tuple(level_health(h, t, overprovisioning_factor) for h, t in levels)
    normalized = min(100, sum(health))
    loads = [0] * len(levels)
    panic = [False] * len(levels)
    if normalized == 0:
        # Everything is down: Envoy sends all load to P0 in panic; a level with no hosts at all
        # cannot take it, so the first level that has hosts does.
        first = next((i for i, (_, total) in enumerate(levels) if total > 0), None)
        if first is not None:
            loads[first] = 100
            panic[first] = panic_threshold_percent > 0
        return PriorityLoad(tuple(loads), health, normalized, tuple(panic))
    remaining = 100
    first_healthy = None
    for i, score in enumerate(health):
        if first_healthy is None and score > 0:
            first_healthy = i
        loads[i] = min(remaining, score * 100 // normalized)
        remaining -= loads[i]
    if remaining and first_healthy is not None:
        loads[first_healthy] += remaining
    if normalized < 100:
        for i, (healthy, total) in enumerate(levels):
            healthy_percent = 100.0 * healthy / total if total else 0.0
            panic[i] = total > 0 and healthy_percent < panic_threshold_percent
    return PriorityLoad(tuple(loads), health, normalized, tuple(panic))


def choose_priority(loads: Sequence[int], rng: random.Random) -> int:
    """A level drawn with probability load/100 (Envoy's `choosePriority`: hash % 100 + 1, cumulative)."""
    point = int(rng.random() * 100) + 1
    cumulative = 0
    for level, load in enumerate(loads):
        cumulative += load
        if point <= cumulative:
            return level
    # Loads sum to 100 whenever any level has hosts; the last level is a safe answer otherwise.
    return len(loads) - 1
