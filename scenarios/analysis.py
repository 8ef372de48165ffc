"""Pure analysis of a drill's request samples: windows, percentiles, traffic share, failover times, SLO verdicts.

Definitions (stated so that numbers mean the same thing in every report):
- *time to first success elsewhere*: from a fault's start to the first successful request served outside
  the faulted place (zone, cluster or region).
- *time to failover* (to steady state): from the fault's start to the start of the first run of
  `STEADY_RUN` consecutive requests that all succeeded and were all served outside the faulted place.
- *time to return*: from the fault's end to the first request served again by the place the fault took
  the traffic from (the caller's own zone in a zone outage; the region in a region outage).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import attrs

STEADY_RUN = 20


@attrs.frozen
class Sample:
    start_s: float  # since the drill began
    latency_s: float
    ok: bool
    status: int  # HTTP status, 0 for a transport error
    idempotent: bool
    cluster: str = ""  # who served it, from x-isthmus-cluster
    zone: str = ""  # from the demo service's x-demo-zone
    reason: str = ""


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@attrs.frozen
class Window:
    start_s: float
    requests: int
    success_ratio: float
    p50_ms: float
    p99_ms: float
    share_by_zone: dict[str, float]


def windows(samples: Iterable[Sample], width_s: float = 1.0) -> list[Window]:
    buckets: dict[int, list[Sample]] = {}
    for s in samples:
        buckets.setdefault(int(s.start_s // width_s), []).append(s)
    out = []
    for index in sorted(buckets):
        group = buckets[index]
        ok = [s for s in group if s.ok]
        zones: dict[str, int] = {}
        for s in ok:
            zones[s.zone or s.cluster or "?"] = zones.get(s.zone or s.cluster or "?", 0) + 1
        latencies = [s.latency_s * 1000 for s in group]
        out.append(
            Window(
                start_s=index * width_s,
                requests=len(group),
                success_ratio=len(ok) / len(group),
                p50_ms=percentile(latencies, 50),
                p99_ms=percentile(latencies, 99),
                share_by_zone={z: n / len(ok) for z, n in sorted(zones.items())} if ok else {},
            )
        )
    return out


def _outside(s: Sample, place: set[str]) -> bool:
    return s.ok and s.zone not in place and s.cluster not in place


def time_to_first_success_elsewhere(samples: Sequence[Sample], fault_at_s: float, place: set[str]) -> float | None:
    for s in sorted(samples, key=lambda x: x.start_s):
        if s.start_s >= fault_at_s and _outside(s, place):
            return s.start_s + s.latency_s - fault_at_s
    return None


def time_to_failover(samples: Sequence[Sample], fault_at_s: float, place: set[str], until_s: float | None = None) -> float | None:
    run_start = None
    run = 0
    for s in sorted(samples, key=lambda x: x.start_s):
        if s.start_s < fault_at_s or (until_s is not None and s.start_s >= until_s):
            continue
        if _outside(s, place):
            if run == 0:
                run_start = s.start_s
            run += 1
            if run >= STEADY_RUN:
                return max(0.0, run_start - fault_at_s)
        else:
            run = 0
    return None


def time_to_return(samples: Sequence[Sample], restored_at_s: float, home: set[str]) -> float | None:
    for s in sorted(samples, key=lambda x: x.start_s):
        if s.start_s >= restored_at_s and s.ok and (s.zone in home or s.cluster in home):
            return s.start_s - restored_at_s
    return None


@attrs.frozen
class Verdict:
    slo: str
    limit: float
    measured: float | None
    held: bool


def check(name: str, limit: float | None, measured: float | None, *, at_least: bool = False) -> Verdict | None:
    """One SLO verdict; a missing measurement (the event never happened) does not hold."""
    if limit is None:
        return None
    if measured is None or (isinstance(measured, float) and math.isnan(measured)):
        return Verdict(name, limit, None, False)
    held = measured >= limit if at_least else measured <= limit
    return Verdict(name, limit, measured, held)
