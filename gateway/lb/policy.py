"""Per-service failover policy: frozen, validated values with defaults that need no config at all.

Owns `FailoverPolicy`, `OutlierPolicy`, `HealthCheckPolicy`, `PeerProbePolicy`, `RetryPolicy`,
`TimeoutPolicy`, `CircuitBreakerPolicy` and `ServicePolicy`, read from the TOML table
`[policies."name.namespace"]` with `ServicePolicy.from_mapping(service, mapping)`:

```toml
[policies."checkout.shop"]
failover = ["eu-west", "ap-south"]          # or a table: {regions = [...], panic_threshold_percent = 50}
[policies."checkout.shop".outlier]
consecutive_5xx = 5
base_ejection_s = 5.0
[policies."checkout.shop".retry]
attempts = 3
retry_on = ["connect-failure", "reset", "503", "gateway-error"]
[policies."checkout.shop".timeout]
per_try_timeout_s = 1.0
```

A bad value raises `gateway.errors.ConfigInvalid` with one line naming the service and the field
(`policy "checkout.shop": outlier.consecutive_5xx: -1 is not an integer >= 0`). Unknown keys are
errors too: a typo must not silently fall back to a default.

`ServicePolicy.envoy_defaults()` is Envoy's (and Istio's) outlier-detection defaults, kept for the
failover benchmark's comparison. Pure: imports neither trio nor anything that does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

from gateway.errors import ConfigInvalid
from registry.model import DNS1123_LABEL

RETRY_ON = ("connect-failure", "reset", "503", "gateway-error", "5xx")
# RFC 9110 section 9.2.2: methods whose repetition has the same effect as one request.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class _Fail(ConfigInvalid):
    """A field failed validation; `from_mapping` adds the service and field to its one line."""


def _int(value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in {lo}-{hi}"
        raise _Fail(f"{value!r} is not an integer {bound}")
    return value


def _float(value: Any, lo: float, hi: float | None = None, *, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Fail(f"{value!r} is not a number")
    value = float(value)
    if value < lo or (lo_open and value == lo) or (hi is not None and value > hi):
        low = f"> {lo:g}" if lo_open else f">= {lo:g}"
        raise _Fail(f"{value!r} is not a number {low}" + ("" if hi is None else f" and <= {hi:g}"))
    return value


def _opt_float(value: Any, lo: float) -> float | None:
    if value is None or value == 0:
        return None
    return _float(value, lo, lo_open=True)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Fail(f"{value!r} is not true or false")
    return value


def _regions(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(r, str) and r for r in value):
        raise _Fail(f"{value!r} is not a list of region names")
    for region in value:
        if not DNS1123_LABEL.match(region):
            raise _Fail(f"{region!r} is not a region name (lower-case letters, digits and '-')")
    if len(set(value)) != len(value):
        raise _Fail(f"{list(value)!r} names a region twice")
    return tuple(value)


def _retry_on(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise _Fail(f"{value!r} is not a list of conditions")
    for cond in value:
        if cond not in RETRY_ON:
            raise _Fail(f"{cond!r} is not one of {', '.join(RETRY_ON)}")
    return tuple(value)


def _methods(value: Any) -> frozenset[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(m, str) and m.isalpha() for m in value):
        raise _Fail(f"{value!r} is not a list of HTTP methods")
    return frozenset(m.upper() for m in value)


def _build(cls: type, service: str, section: str, mapping: Any, checks: Mapping[str, Any]) -> Any:
    """Validate `mapping` against `checks` (field -> validator) and build `cls`, naming the field on error."""
    if not isinstance(mapping, Mapping):
        raise ConfigInvalid(f'policy "{service}": {section}: {mapping!r} is not a table')
    unknown = sorted(set(mapping) - set(checks))
    if unknown:
        raise ConfigInvalid(
            f'policy "{service}": {section}.{unknown[0]}: unknown field (known: {", ".join(sorted(checks))})'
        )
    values = {}
    for key, value in mapping.items():
        try:
            values[key] = checks[key](value)
        except _Fail as exc:
            raise ConfigInvalid(f'policy "{service}": {section}.{key}: {exc}') from None
    try:
        return cls(**values)
    except _Fail as exc:
        raise ConfigInvalid(f'policy "{service}": {section}: {exc}') from None


@attrs.frozen
class FailoverPolicy:
    """Where traffic goes when the caller's zone and region cannot take it (Envoy priority levels).

    `regions`: other regions in the order to fail over to (P2, P3, ...); regions not listed follow,
    ordered by the measured gateway round-trip time. `overprovisioning_factor` 1.4 and
    `panic_threshold_percent` 50 are Envoy's defaults: a level keeps all its traffic until fewer
    than ~71.4 % of its hosts are healthy (each level is assumed provisioned for 1.4x its load), and a
    level below 50 % healthy while the whole service lacks capacity balances over all its hosts
    rather than overloading the few survivors (Envoy's cascade guard).
    """

    regions: tuple[str, ...] = ()
    overprovisioning_factor: float = 1.4
    panic_threshold_percent: float = 50.0

    CHECKS = {
        "regions": _regions,
        "overprovisioning_factor": lambda v: _float(v, 1.0, 10.0),
        "panic_threshold_percent": lambda v: _float(v, 0.0, 100.0),
    }


@attrs.frozen
class OutlierPolicy:
    """Passive outlier detection on every request (Envoy `outlier_detection`, reacting sooner).

    Envoy's and Istio's defaults (interval 10 s, 5 consecutive 5xx, base ejection 30 s, max
    ejection 10 %) take 10-30 s to move traffic and may leave most of a dead zone in rotation; the
    product exists to reroute within about a second, so:

    - `consecutive_gateway_errors` 3: connect failures, resets, timeouts and 502/503/504 say the
      path is broken, not the request; three in a row (not one) rides out a single lost SYN or a
      restarting pod, and at 200 req/s across a zone three arrive within ~15 ms.
    - `consecutive_5xx` 5: Envoy's count; application 500s are weaker evidence than a dead socket.
    - ejection happens on the failing request itself (`interval_s` 0): Envoy also ejects
      consecutive-error hosts at once, but only returns them at the next 10 s sweep; here a host
      returns exactly when its ejection time ends. `interval_s` > 0 restores Envoy's sweep.
    - `base_ejection_s` 5: long enough for a restarted process to come back, short enough that a
      wrongly ejected host rejoins quickly; each repeat ejection lasts base x times ejected, capped
      at `max_ejection_s` 300 (Envoy's cap), so a flapping host stays out longer and longer.
    - `max_ejection_percent` 100: Envoy's 10 % exists so a shared fault (a dead database behind
      every host) cannot eject a whole cluster; here the panic threshold is that guard (when too
      little capacity is left anywhere, a level balances over all its hosts, ejected or not), and a
      cap below 100 would keep part of a dead zone or a dead remote gateway in rotation while a
      healthy lower priority waits.
    - `uneject_on_healthy_check` on (Envoy's `successful_active_health_check_uneject_host`, also on
      by default): an ejected local endpoint that passes its active health checks again returns at
      once instead of serving out its ejection, so traffic is back in the local zone about
      `healthy_threshold` check intervals after a zone recovers, however often it was ejected before.
    """

    consecutive_5xx: int = 5
    consecutive_gateway_errors: int = 3
    base_ejection_s: float = 5.0
    max_ejection_s: float = 300.0
    max_ejection_percent: int = 100
    interval_s: float = 0.0
    uneject_on_healthy_check: bool = True

    CHECKS = {
        "uneject_on_healthy_check": _bool,
        "consecutive_5xx": lambda v: _int(v, 0),
        "consecutive_gateway_errors": lambda v: _int(v, 0),
        "base_ejection_s": lambda v: _float(v, 0.0, lo_open=True),
        "max_ejection_s": lambda v: _float(v, 0.0, lo_open=True),
        "max_ejection_percent": lambda v: _int(v, 0, 100),
        "interval_s": lambda v: _float(v, 0.0),
    }

    def __attrs_post_init__(self) -> None:
        if self.max_ejection_s < self.base_ejection_s:
            raise _Fail(
                f"max_ejection_s {self.max_ejection_s:g} is below base_ejection_s {self.base_ejection_s:g}"
            )


@attrs.frozen
class HealthCheckPolicy:
    """Active checks of local endpoints (HTTP GET of `path`, or a TCP connect when `path` is empty).

    Interval 1 s with a 0.5 s timeout and `unhealthy_threshold` 2: a hung endpoint (connections
    accepted, nothing answered: invisible to connect-failure detection until requests time out) is
    out within 2.5 s of the fault at worst; two misses, not one, so one lost probe does not eject.
    `healthy_threshold` 2: a returning endpoint must answer twice before it takes traffic again.
    Endpoints start healthy (the catalog says so): a restarted gateway must not black out a service
    while its first checks run (static stability).
    """

    enabled: bool = True
    interval_s: float = 1.0
    timeout_s: float = 0.5
    unhealthy_threshold: int = 2
    healthy_threshold: int = 2
    path: str = "/healthz"

    CHECKS = {
        "enabled": _bool,
        "interval_s": lambda v: _float(v, 0.0, lo_open=True),
        "timeout_s": lambda v: _float(v, 0.0, lo_open=True),
        "unhealthy_threshold": lambda v: _int(v, 1, 100),
        "healthy_threshold": lambda v: _int(v, 1, 100),
        "path": lambda v: v if isinstance(v, str) and (v == "" or v.startswith("/")) else _fail_path(v),
    }

    def __attrs_post_init__(self) -> None:
        if self.timeout_s > self.interval_s:
            raise _Fail(f"timeout_s {self.timeout_s:g} is longer than interval_s {self.interval_s:g}")


def _fail_path(value: Any) -> str:
    raise _Fail(f"{value!r} is not a path starting with '/' (or '' for a TCP connect check)")


@attrs.frozen
class PeerProbePolicy:
    """Gateway-pair probes: each gateway probes every peer gateway over mutual TLS.

    Every 1 s with a 0.5 s timeout (a cross-region round trip is under 0.3 s on a kept-alive
    connection) and 2 consecutive misses: a dead peer is out of rotation at most 2.5 s after it
    dies (a probe just answered, the next two are sent at +1 s and +2 s and time out at +1.5 s and
    +2.5 s), inside the 3 s goal. `rtt_alpha` 0.3 weighs the newest round trip in the EWMA so a
    route change shows within ~3 probes while one slow probe does not reorder regions.
    """

    interval_s: float = 1.0
    timeout_s: float = 0.5
    dead_after_misses: int = 2
    alive_after_successes: int = 1
    rtt_alpha: float = 0.3

    CHECKS = {
        "interval_s": lambda v: _float(v, 0.0, lo_open=True),
        "timeout_s": lambda v: _float(v, 0.0, lo_open=True),
        "dead_after_misses": lambda v: _int(v, 1, 100),
        "alive_after_successes": lambda v: _int(v, 1, 100),
        "rtt_alpha": lambda v: _float(v, 0.0, 1.0, lo_open=True),
    }


@attrs.frozen
class RetryPolicy:
    """The route retry policy. `attempts` counts every try, the first included (1 = no retry).

    3 tries: a zone or cluster loss costs the first try and, rarely, a second before ejection; a
    third try in another locality keeps the request invisible to the client. Retries go to another
    host and, when one exists, another locality (`prefer_other_locality`), since the next host in
    a failing zone usually fails the same way. Only idempotent methods are retried unless
    `retry_non_idempotent`; a connect failure is retried for any method (no byte was sent). The
    retry budget caps retries at `budget_percent` 20 % of active requests (Envoy's retry budget
    default) with at least `min_retry_concurrency` 32 in flight. The floor is larger than Envoy's 3
    on purpose: a zone or link loss fails every in-flight request to it at once, and the floor must
    cover that burst (the drills run 16 concurrent requests per caller) or most of it reaches the
    client; under sustained overload the 20 % share, not the floor, bounds retries.
    """

    attempts: int = 3
    retry_on: tuple[str, ...] = ("connect-failure", "reset", "503", "gateway-error")
    prefer_other_locality: bool = True
    retry_non_idempotent: bool = False
    idempotent_methods: frozenset[str] = IDEMPOTENT_METHODS
    budget_percent: float = 20.0
    min_retry_concurrency: int = 32

    CHECKS = {
        "attempts": lambda v: _int(v, 1, 10),
        "retry_on": _retry_on,
        "prefer_other_locality": _bool,
        "retry_non_idempotent": _bool,
        "idempotent_methods": _methods,
        "budget_percent": lambda v: _float(v, 0.0, 100.0),
        "min_retry_concurrency": lambda v: _int(v, 0),
    }


@attrs.frozen
class TimeoutPolicy:
    """Timeouts, with units in the names. `None` (or 0 in TOML) disables one.

    - `connect_timeout_s` 1.0: a connect (TCP + TLS) inside a mesh completes in milliseconds and
      cross-region in well under a second; past that the peer is gone or blackholed.
    - `per_try_timeout_s` 1.0 covers the wait for a try's response headers, not a streamed body: a
      try that has not answered an interactive request in 1 s is more likely hung than slow, and
      a retry elsewhere answers sooner. Slow endpoints (reports, long polls) set their own.
    - `request_timeout_s` 15: all tries together (Envoy's route timeout default).
    - `idle_timeout_s` 300: a stream or connection with no bytes either way for this long is closed.
    """

    connect_timeout_s: float | None = 1.0
    per_try_timeout_s: float | None = 1.0
    request_timeout_s: float | None = 15.0
    idle_timeout_s: float | None = 300.0

    CHECKS = {
        "connect_timeout_s": lambda v: _opt_float(v, 0.0),
        "per_try_timeout_s": lambda v: _opt_float(v, 0.0),
        "request_timeout_s": lambda v: _opt_float(v, 0.0),
        "idle_timeout_s": lambda v: _opt_float(v, 0.0),
    }


@attrs.frozen
class CircuitBreakerPolicy:
    """Limits per upstream cluster (Envoy's circuit-breaker defaults: 1024 each).

    1024 in-flight requests to one service is far above what one Python gateway worker proxies
    (~7.5k req/s per core at sub-ms latency); reaching it means the upstream has stalled, and
    failing fast with 503 `overflow` beats queueing without bound.
    """

    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024

    CHECKS = {
        "max_connections": lambda v: _int(v, 1),
        "max_pending_requests": lambda v: _int(v, 1),
        "max_requests": lambda v: _int(v, 1),
    }


_SECTIONS: dict[str, type] = {
    "failover": FailoverPolicy,
    "outlier": OutlierPolicy,
    "health_check": HealthCheckPolicy,
    "peer_probe": PeerProbePolicy,
    "retry": RetryPolicy,
    "timeout": TimeoutPolicy,
    "circuit_breaker": CircuitBreakerPolicy,
}


@attrs.frozen
class ServicePolicy:
    """Everything `gateway.lb` decides with for one service; `ServicePolicy()` is the default."""

    failover: FailoverPolicy = attrs.field(factory=FailoverPolicy)
    outlier: OutlierPolicy = attrs.field(factory=OutlierPolicy)
    health_check: HealthCheckPolicy = attrs.field(factory=HealthCheckPolicy)
    peer_probe: PeerProbePolicy = attrs.field(factory=PeerProbePolicy)
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    timeout: TimeoutPolicy = attrs.field(factory=TimeoutPolicy)
    circuit_breaker: CircuitBreakerPolicy = attrs.field(factory=CircuitBreakerPolicy)

    @classmethod
    def from_mapping(cls, service: str, mapping: Mapping[str, Any] | None) -> ServicePolicy:
        """Build from the TOML table `[policies."<service>"]`; raises `ConfigInvalid` naming the field."""
        if mapping is None:
            return cls()
        if not isinstance(mapping, Mapping):
            raise ConfigInvalid(f'policy "{service}": {mapping!r} is not a table')
        unknown = sorted(set(mapping) - set(_SECTIONS))
        if unknown:
            raise ConfigInvalid(
                f'policy "{service}": {unknown[0]}: unknown section (known: {", ".join(sorted(_SECTIONS))})'
            )
        sections = {}
        for name, value in mapping.items():
            kind = _SECTIONS[name]
            if name == "failover" and isinstance(value, (list, tuple)):
                value = {"regions": value}
            sections[name] = _build(kind, service, name, value, kind.CHECKS)
        return cls(**sections)

    @classmethod
    def from_policies(cls, policies: Mapping[str, Any] | None) -> dict[str, ServicePolicy]:
        """All of a config's `[policies]` table: service key -> policy."""
        if policies is None:
            return {}
        if not isinstance(policies, Mapping):
            raise ConfigInvalid(f"policies: {policies!r} is not a table")
        return {service: cls.from_mapping(service, table) for service, table in policies.items()}

    def for_route(
        self,
        *,
        timeout_s: float | None = None,
        attempts: int | None = None,
        per_try_timeout_s: float | None = None,
        retry_on: tuple[str, ...] | None = None,
    ) -> tuple[RetryPolicy, TimeoutPolicy]:
        """The retry and timeout policy of one route: a route rule's settings (`gateway.policy`'s
        `timeout_s` and `retry` values, already validated there) over this service's policy."""
        retry, timeout = self.retry, self.timeout
        if attempts is not None:
            retry = attrs.evolve(retry, attempts=attempts)
        if retry_on is not None:
            retry = attrs.evolve(retry, retry_on=tuple(retry_on))
        if timeout_s is not None:
            timeout = attrs.evolve(timeout, request_timeout_s=timeout_s)
        if per_try_timeout_s is not None:
            timeout = attrs.evolve(timeout, per_try_timeout_s=per_try_timeout_s)
        return retry, timeout

    @classmethod
    def envoy_defaults(cls) -> ServicePolicy:
        """Envoy/Istio outlier-detection defaults with no active checks and no gateway probes.

        Envoy counts locally originated errors (connect failure, reset, timeout) as 5xx when
        `split_external_local_origin_errors` is false (its default), and its separate
        consecutive-gateway-failure detector is not enforced by default, hence 0 here.
        """
        return cls(
            outlier=OutlierPolicy(
                consecutive_5xx=5,
                consecutive_gateway_errors=0,
                base_ejection_s=30.0,
                max_ejection_s=300.0,
                max_ejection_percent=10,
                interval_s=10.0,
            ),
            health_check=HealthCheckPolicy(enabled=False),
        )
