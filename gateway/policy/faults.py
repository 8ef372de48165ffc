"""Fault injection per route: the validated settings and the pure per-request decision.

A route may delay a percentage of its requests (rehearse a slow dependency) and abort a
percentage with a given status (rehearse a failing one), optionally only for requests coming
from one source cluster. The decision takes the caller's `random.Random`; the gateway does the
waiting (`trio.sleep`) and answers the abort. Delay and abort are drawn independently, as Envoy's
fault filter does, so a request may be delayed and then aborted.

Must not import: trio, socket, time, `federation`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

import attrs

from gateway.errors import ConfigInvalid
from registry.model import DNS1123_LABEL

# A delay longer than this is a misconfiguration, not a rehearsal: it would outlive every timeout.
MAX_DELAY_S = 300.0
ABORT_STATUSES = range(400, 600)
# The `x-isthmus-reason` of an injected abort, so a drill's failures are never mistaken for real ones.
FAULT_REASON = "fault-injected"


def _number(where: str, field: str, value: Any, low: float, high: float, *, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigInvalid(f"{where}: {field}: {value!r} is not a number")
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ConfigInvalid(f"{where}: {field}: {value!r} is not in {bracket}{low:g}, {high:g}]")
    return float(value)


def _table(where: str, field: str, value: Any, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigInvalid(f"{where}: {field}: must be a table")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ConfigInvalid(f"{where}: {field}: unknown key {unknown[0]!r} (known: {', '.join(allowed)})")
    return value


@attrs.frozen
class FaultSettings:
    """What a route injects: `delay_percent` of requests wait `delay_s`; `abort_percent` get `abort_status`."""

    delay_percent: float = 0.0
    delay_s: float = 0.0
    abort_percent: float = 0.0
    abort_status: int = 503
    source_cluster: str | None = None

    @classmethod
    def from_mapping(cls, where: str, value: Any) -> FaultSettings:
        """Parse `fault = { delay = {percent, seconds}, abort = {percent, status}, source_cluster }`.

        `where` names the service and rule for the one-line error.
        """
        table = _table(where, "fault", value, ("delay", "abort", "source_cluster"))
        if "delay" not in table and "abort" not in table:
            raise ConfigInvalid(f"{where}: fault: needs a delay or an abort table")
        kwargs: dict[str, Any] = {}
        if "delay" in table:
            delay = _table(where, "fault.delay", table["delay"], ("percent", "seconds"))
            for key in ("percent", "seconds"):
                if key not in delay:
                    raise ConfigInvalid(f"{where}: fault.delay: {key} is required")
            kwargs["delay_percent"] = _number(where, "fault.delay.percent", delay["percent"], 0, 100)
            kwargs["delay_s"] = _number(
                where, "fault.delay.seconds", delay["seconds"], 0, MAX_DELAY_S, low_open=True
            )
        if "abort" in table:
            abort = _table(where, "fault.abort", table["abort"], ("percent", "status"))
            for key in ("percent", "status"):
                if key not in abort:
                    raise ConfigInvalid(f"{where}: fault.abort: {key} is required")
            kwargs["abort_percent"] = _number(where, "fault.abort.percent", abort["percent"], 0, 100)
            status = abort["status"]
            if isinstance(status, bool) or not isinstance(status, int) or status not in ABORT_STATUSES:
                raise ConfigInvalid(
                    f"{where}: fault.abort.status: {status!r} is not an HTTP error status (400-599)"
                )
            kwargs["abort_status"] = status
        if "source_cluster" in table:
            cluster = table["source_cluster"]
            if not isinstance(cluster, str) or not DNS1123_LABEL.fullmatch(cluster):
                raise ConfigInvalid(f"{where}: fault.source_cluster: {cluster!r} is not a cluster name")
            kwargs["source_cluster"] = cluster
        return cls(**kwargs)


@attrs.frozen
class FaultDecision:
    """What to do to one request: wait `delay_s` (0 = no delay), then answer `abort_status` if set."""

    delay_s: float = 0.0
    abort_status: int | None = None

    @property
    def injected(self) -> bool:
        return self.delay_s > 0 or self.abort_status is not None


NO_FAULT = FaultDecision()


def decide_fault(
    settings: FaultSettings | None, source_cluster: str | None, rng: random.Random
) -> FaultDecision:
    """Draw the fault for one request: each percentage is an independent Bernoulli trial on `rng`.

    Returns `NO_FAULT` without drawing when the route has no fault or the request comes from
    another source cluster than the one the fault is limited to.
    """
    if settings is None:
        return NO_FAULT
    if settings.source_cluster is not None and settings.source_cluster != source_cluster:
        return NO_FAULT
    delay_s = (
        settings.delay_s if settings.delay_percent and rng.random() * 100.0 < settings.delay_percent else 0.0
    )
    abort = (
        settings.abort_status
        if settings.abort_percent and rng.random() * 100.0 < settings.abort_percent
        else None
    )
    if not delay_s and abort is None:
        return NO_FAULT
    return FaultDecision(delay_s, abort)
