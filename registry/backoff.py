"""Capped exponential backoff with full jitter: the pure schedule long-running callers retry on.

Owns only the arithmetic (AWS Architecture Blog, "Exponential Backoff And Jitter": full
jitter spreads reconnecting gateways so a registry that comes back is not hit by all of them
at once). Takes a `random.Random`; never imports trio or reads a clock.
"""

from __future__ import annotations

import random

import attrs


@attrs.frozen
class Backoff:
    """Delay before retry number `attempt` (0-based): uniform in [0, min(cap, base × 2^attempt)]."""

    base_s: float = 0.1
    cap_s: float = 10.0

    def ceiling(self, attempt: int) -> float:
        return min(self.cap_s, self.base_s * 2 ** min(attempt, 62))

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, self.ceiling(attempt))

    def schedule(self, attempts: int, rng: random.Random) -> list[float]:
        return [self.delay(i, rng) for i in range(attempts)]
