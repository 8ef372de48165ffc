"""Weighted power-of-two-choices least-request inside one priority level.

Envoy's `least_request` load balancer with `choice_count = 2` (envoyproxy.io,
intro/arch_overview/upstream/load_balancing/load_balancers, "Weighted least request"): draw two
distinct hosts and send the request to the one with fewer active requests. Weights count the way
Envoy's weighted variant counts them: a host's load is `active_requests / weight`, so a host of
weight 3 (a remote cluster whose gateway fronts three healthy backends) carries three times the
in-flight requests of a weight-1 host before it looks as busy.

The two candidates are drawn in proportion to weight, and a tie (typically an idle service where
every host has 0 active) goes to the first draw, so idle traffic also splits by weight. Two
choices rather than one least-loaded scan: it avoids herding every gateway worker onto the same
momentarily idle host (Mitzenmacher, "The Power of Two Choices in Randomized Load Balancing"),
and a slow host, whose requests pile up, loses almost every comparison (brownout).

Pure: no trio, no clock; the caller passes a `random.Random`.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class WeightedHosts(Generic[T]):
    """Hosts with their weights, prepared once (per priority level and state change) for many picks."""

    __slots__ = ("hosts", "weights", "cumulative", "total", "uniform")

    def __init__(self, hosts: Sequence[T], weights: Sequence[float]) -> None:
        self.hosts = list(hosts)
        clean = [max(0.0, float(w)) for w in weights]
        if sum(clean) <= 0:
            clean = [1.0] * len(self.hosts)  # no weight information: plain power of two choices
        self.weights = clean
        self.uniform = len(set(clean)) <= 1
        self.cumulative = []
        running = 0.0
        for w in clean:
            running += w
            self.cumulative.append(running)
        self.total = running

    def __len__(self) -> int:
        return len(self.hosts)

    def choose(self, rng: random.Random, active: Callable[[T], int]) -> T:
        """Draw two distinct hosts in proportion to weight; the lower `active / weight` wins, ties the first."""
        hosts = self.hosts
        n = len(hosts)
        if n == 1:
            return hosts[0]
        if self.uniform:
            i = int(rng.random() * n)
            j = int(rng.random() * (n - 1))
            if j >= i:
                j += 1
            a, b = hosts[i], hosts[j]
            return b if active(b) < active(a) else a
        weights, cumulative, total = self.weights, self.cumulative, self.total
        i = min(bisect.bisect_right(cumulative, rng.random() * total), n - 1)
        while weights[i] <= 0:  # only reachable through float edges
            i = (i + 1) % n
        # The second draw excludes the first host's interval from the line.
        point = rng.random() * (total - weights[i])
        if point >= cumulative[i] - weights[i]:
            point += weights[i]
        j = min(bisect.bisect_right(cumulative, point), n - 1)
        if j == i or weights[j] <= 0:
            j = next((k for k in range(n) if k != i and weights[k] > 0), i)
            if j == i:
                return hosts[i]
        a, b = hosts[i], hosts[j]
        return b if active(b) / weights[j] < active(a) / weights[i] else a


def choose(
    hosts: Sequence[T],
    rng: random.Random,
    *,
    weight: Callable[[T], float],
    active: Callable[[T], int],
) -> T:
    """Pick one of `hosts` (non-empty) by weighted power-of-two-choices on `active / weight`."""
    return WeightedHosts(hosts, [weight(h) for h in hosts]).choose(rng, active)
