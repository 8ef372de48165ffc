"""The passive outlier detector: per-host consecutive-failure counters, ejection and return.

Envoy's outlier detection (envoyproxy.io, intro/arch_overview/upstream/outlier):

- consecutive 5xx: N failures in a row eject the host. As in Envoy with
  `split_external_local_origin_errors = false` (its default), locally originated errors
  (connect failure, reset, timeout) count as 5xx too.
- consecutive gateway errors: N of 502/503/504, connect failure, reset or timeout in a row.
- ejection time = `base_ejection_s` x times ejected, capped at `max_ejection_s`; the multiplier
  decays by one for every quiet period (`interval_s`, or `base_ejection_s` when there is no sweep
  interval) the host spends in rotation, as Envoy decrements it at each healthy sweep.
- `max_ejection_percent`: an ejection that would bring the ejected share of all hosts to or past
  the cap is refused (Envoy's `ejected_percent < max` check), reported as `EjectionCapped`.
- return: with `interval_s` 0 (Isthmus' default) a host returns at the exact end of its ejection
  time; with `interval_s` > 0 it returns at the first sweep (multiples of `interval_s` from the
  detector's epoch) at or after that, as Envoy's timer does.

Hosts are keyed by a string: an endpoint id for local endpoints, `gateway:<cluster>` for a remote
cluster reached through its gateway. Events are past-tense values. State changes only through
`record()` and `expire()`, both given `now`; queries never change state.

Pure: no trio, no clock reads.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable

import attrs

from gateway.lb.policy import OutlierPolicy


class Outcome(enum.StrEnum):
    """How one try ended, as the gateway's I/O saw it."""

    SUCCESS = "success"  # a response that is not a 5xx (4xx included: the host is fine)
    HTTP_5XX = "5xx"  # a 5xx response other than 502/503/504
    GATEWAY_ERROR = "gateway-error"  # a 502, 503 or 504 response
    CONNECT_FAILURE = "connect-failure"  # refused, unreachable, TLS handshake failure, connect timeout
    RESET = "reset"  # the connection or stream was reset before a full response
    TIMEOUT = "timeout"  # the per-try timeout expired before response headers
    CANCELLED = "cancelled"  # the client went away: says nothing about the host

    @classmethod
    def from_status(cls, status: int) -> Outcome:
        if status in (502, 503, 504):
            return cls.GATEWAY_ERROR
        if 500 <= status <= 599:
            return cls.HTTP_5XX
        return cls.SUCCESS

    @classmethod
    def coerce(cls, value: Outcome | str | int) -> Outcome:
        """An `Outcome`, its string value, or an HTTP status code."""
        if isinstance(value, Outcome):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls.from_status(value)
        return cls(value)

    @property
    def is_gateway_error(self) -> bool:
        return self in _GATEWAY_ERRORS

    @property
    def is_failure(self) -> bool:
        return self in _FAILURES


_GATEWAY_ERRORS = frozenset({Outcome.GATEWAY_ERROR, Outcome.CONNECT_FAILURE, Outcome.RESET, Outcome.TIMEOUT})
_FAILURES = _GATEWAY_ERRORS | {Outcome.HTTP_5XX}


@attrs.frozen
class EndpointEjected:
    key: str
    at: float
    returns_at: float
    reason: str  # "consecutive-gateway-errors" or "consecutive-5xx"
    times_ejected: int


@attrs.frozen
class EndpointReturned:
    key: str
    at: float


@attrs.frozen
class EjectionCapped:
    """An ejection the max-ejection-percent cap refused."""

    key: str
    at: float
    reason: str


OutlierEvent = EndpointEjected | EndpointReturned | EjectionCapped


@attrs.define
class HostRecord:
    consecutive_5xx: int = 0
    consecutive_gateway_errors: int = 0
    times_ejected: int = 0
    ejected_at: float | None = None
    returns_at: float | None = None
    in_rotation_since: float = 0.0

    @property
    def ejected(self) -> bool:
        return self.returns_at is not None


class OutlierDetector:
    """Outlier state for the hosts of one service."""

    def __init__(self, policy: OutlierPolicy | None = None, *, epoch: float = 0.0) -> None:
        self.policy = policy or OutlierPolicy()
        self.epoch = epoch
        self.hosts: dict[str, HostRecord] = {}
        self._next_return: float | None = None

    def sync(self, keys: Iterable[str], now: float) -> None:
        """Track exactly `keys`: new hosts start clean, hosts that remain keep their state."""
        keys = list(keys)
        kept = {k: self.hosts[k] for k in keys if k in self.hosts}
        for key in keys:
            if key not in kept:
                kept[key] = HostRecord(in_rotation_since=now)
        self.hosts = kept
        self._update_next_return()

    def _update_next_return(self) -> None:
        times = [r.returns_at for r in self.hosts.values() if r.returns_at is not None]
        self._next_return = min(times) if times else None

    def is_ejected(self, key: str) -> bool:
        record = self.hosts.get(key)
        return record is not None and record.ejected

    def ejected(self) -> tuple[str, ...]:
        return tuple(sorted(k for k, r in self.hosts.items() if r.ejected))

    def next_return(self) -> float | None:
        """When the earliest ejected host returns (the time `expire()` next has work)."""
        return self._next_return

    def expire(self, now: float) -> list[OutlierEvent]:
        """Return every host whose ejection has ended by `now`; events carry the exact return time."""
        if self._next_return is None or now < self._next_return:
            return []
        events: list[OutlierEvent] = []
        for key, record in self.hosts.items():
            if record.returns_at is not None and record.returns_at <= now:
                events.append(EndpointReturned(key, record.returns_at))
                record.in_rotation_since = record.returns_at
                record.returns_at = None
                record.ejected_at = None
                record.consecutive_5xx = 0
                record.consecutive_gateway_errors = 0
        self._update_next_return()
        return events

    def return_now(self, key: str, now: float) -> list[OutlierEvent]:
        """End `key`'s ejection early (its active health checks pass again); its ejection count stays,
        so a host that keeps failing is still ejected for longer each time."""
        record = self.hosts.get(key)
        if record is None or not record.ejected:
            return []
        record.in_rotation_since = now
        record.returns_at = None
        record.ejected_at = None
        record.consecutive_5xx = 0
        record.consecutive_gateway_errors = 0
        self._update_next_return()
        return [EndpointReturned(key, now)]

    def record(self, key: str, outcome: Outcome | str | int, now: float) -> list[OutlierEvent]:
        """Count one try's outcome for `key`; may eject it on this very request."""
        outcome = Outcome.coerce(outcome)
        events = self.expire(now)
        record = self.hosts.get(key)
        if record is None or outcome is Outcome.CANCELLED:
            return events
        if not outcome.is_failure:
            record.consecutive_5xx = 0
            record.consecutive_gateway_errors = 0
            return events
        if record.ejected:
            # Requests that were in flight when the host was ejected: it is already out.
            return events
        record.consecutive_5xx += 1
        if outcome.is_gateway_error:
            record.consecutive_gateway_errors += 1
        else:
            record.consecutive_gateway_errors = 0
        policy = self.policy
        reason = None
        if (
            policy.consecutive_gateway_errors
            and record.consecutive_gateway_errors >= policy.consecutive_gateway_errors
        ):
            reason = "consecutive-gateway-errors"
        elif policy.consecutive_5xx and record.consecutive_5xx >= policy.consecutive_5xx:
            reason = "consecutive-5xx"
        if reason is not None:
            events.append(self._eject(key, record, reason, now))
        return events

    def _eject(self, key: str, record: HostRecord, reason: str, now: float) -> OutlierEvent:
        policy = self.policy
        ejected_now = sum(1 for r in self.hosts.values() if r.ejected)
        if 100 * ejected_now / len(self.hosts) >= policy.max_ejection_percent:
            record.consecutive_5xx = 0
            record.consecutive_gateway_errors = 0
            return EjectionCapped(key, now, reason)
        decay_period = policy.interval_s or policy.base_ejection_s
        quiet_periods = math.floor(max(0.0, now - record.in_rotation_since) / decay_period)
        record.times_ejected = max(0, record.times_ejected - quiet_periods) + 1
        duration = min(policy.max_ejection_s, policy.base_ejection_s * record.times_ejected)
        returns_at = now + duration
        if policy.interval_s > 0:
            sweeps = math.ceil((returns_at - self.epoch) / policy.interval_s - 1e-9)
            returns_at = self.epoch + sweeps * policy.interval_s
        record.ejected_at = now
        record.returns_at = returns_at
        if self._next_return is None or returns_at < self._next_return:
            self._next_return = returns_at
        record.consecutive_5xx = 0
        record.consecutive_gateway_errors = 0
        return EndpointEjected(key, now, returns_at, reason, record.times_ejected)
