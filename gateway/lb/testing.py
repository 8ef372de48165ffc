"""A simulated fleet and a discrete-event simulation that drives `Balancer` with no sockets and no clock.

`FakeFleet` says what a try, an active health check or a gateway-pair probe does at a given
virtual time (answer, refuse the connection, hang, answer slowly, answer 503); faults are
scheduled on it. `simulate()` sends requests at a fixed rate through `Balancer.begin()` /
`RequestPlan`, runs active checks and peer probes on their intervals, and records every try, so
scenario tests and `isthmus bench failover --pure` can assert and measure exact virtual times of
ejection and of traffic shift.

The demo topology (DESIGN) is `demo_endpoints()`: `echo.demo` in east-1 (us-east-1a, us-east-1b),
east-2 (us-east-1c) and west-1 (eu-west-1a); `hello.demo` in east-2 and west-1 only.

Pure: no trio, no clock reads; time and randomness are arguments.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import random
from collections.abc import Iterable, Mapping

import attrs

from gateway.errors import NoHealthyEndpoint, Overloaded
from gateway.lb.balancer import GATEWAY_KEY_PREFIX, Balancer
from gateway.lb.health import ActiveHealthCheck, PeerProbe
from gateway.lb.outlier import Outcome
from gateway.lb.policy import ServicePolicy
from registry.model import Endpoint, Locality

OK = "ok"
REFUSE = "refuse"  # connection refused: the process is gone, the host answers with RST
BLACKHOLE = "blackhole"  # nothing answers: connects or requests hang until a timeout
ERROR = "error"  # answers 503
MODES = (OK, REFUSE, BLACKHOLE, ERROR)

CONNECT_REFUSED_S = 0.001  # time for a refused connect to be noticed on a LAN


@attrs.frozen
class Behaviour:
    mode: str = OK
    latency_s: float = 0.002


class FakeFleet:
    """What each endpoint and each peer gateway does over time. Keys: endpoint ids, `gateway:<cluster>`."""

    def __init__(self, default: Behaviour | None = None) -> None:
        self.default = default or Behaviour()
        self._changes: dict[str, list[tuple[float, Behaviour]]] = {}

    def set(
        self, keys: str | Iterable[str], at: float, mode: str = OK, latency_s: float | None = None
    ) -> None:
        """From virtual time `at` on, `keys` behave as `mode` (with `latency_s` when they answer)."""
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        keys = [keys] if isinstance(keys, str) else list(keys)
        behaviour = Behaviour(mode, self.default.latency_s if latency_s is None else latency_s)
        for key in keys:
            changes = self._changes.setdefault(key, [])
            changes.append((at, behaviour))
            changes.sort(key=lambda c: c[0])

    def at(self, key: str, t: float) -> Behaviour:
        changes = self._changes.get(key)
        if not changes:
            return self.default
        i = bisect.bisect_right([c[0] for c in changes], t)
        return changes[i - 1][1] if i else self.default


def outcome_of(behaviour: Behaviour, start: float, deadline: float | None) -> tuple[Outcome, float]:
    """How a try (or check) started at `start` ends, and when, given its deadline."""
    if behaviour.mode == REFUSE:
        return Outcome.CONNECT_FAILURE, start + CONNECT_REFUSED_S
    if behaviour.mode == BLACKHOLE:
        if deadline is None:
            raise ValueError("a blackholed try needs a deadline (per-try or request timeout)")
        return Outcome.TIMEOUT, deadline
    end = start + behaviour.latency_s
    if deadline is not None and end > deadline:
        return Outcome.TIMEOUT, deadline
    return (Outcome.GATEWAY_ERROR if behaviour.mode == ERROR else Outcome.SUCCESS), end


@attrs.frozen
class TryRecord:
    request: int
    started: float
    ended: float
    key: str
    level: int
    outcome: Outcome


@attrs.frozen
class RequestRecord:
    request: int
    arrived: float
    finished: float
    ok: bool
    tries: int
    reason: str


@attrs.define
class SimulationResult:
    tries: list[TryRecord] = attrs.field(factory=list)
    requests: list[RequestRecord] = attrs.field(factory=list)
    events: list[tuple[float, object]] = attrs.field(factory=list)

    def picks_after(self, t: float) -> list[TryRecord]:
        return [r for r in self.tries if r.started >= t]

    def last_try_to(self, keys: Iterable[str], after: float) -> TryRecord | None:
        keys = set(keys)
        hits = [r for r in self.tries if r.started >= after and r.key in keys]
        return max(hits, key=lambda r: r.started) if hits else None

    def first_success_elsewhere(self, keys: Iterable[str], after: float) -> TryRecord | None:
        keys = set(keys)
        hits = [
            r for r in self.tries if r.ended >= after and r.key not in keys and r.outcome is Outcome.SUCCESS
        ]
        return min(hits, key=lambda r: r.ended) if hits else None

    def failed_requests(self, after: float = 0.0) -> list[RequestRecord]:
        return [r for r in self.requests if r.arrived >= after and not r.ok]


def simulate(
    balancer: Balancer,
    fleet: FakeFleet,
    *,
    until: float,
    rate_per_s: float = 200.0,
    rng: random.Random,
    start: float = 0.0,
    method: str = "GET",
    active_checks: bool = True,
    peer_probes: bool = True,
    check_phase: Mapping[str, float] | None = None,
) -> SimulationResult:
    """Run requests at `rate_per_s` from `start` to `until` through `balancer` against `fleet`.

    Active checks run for local endpoints when the policy enables them (and `active_checks`),
    gateway-pair probes for remote clusters when `peer_probes`; both start at `start` plus the
    key's phase from `check_phase` (default 0). A remote cluster answers a request when its
    gateway does and at least one of its backends does; a probe reports how many do.
    """
    policy = balancer.policy
    result = SimulationResult()
    queue: list[tuple[float, int, str, object]] = []
    seq = itertools.count()

    def push(t: float, kind: str, payload: object) -> None:
        heapq.heappush(queue, (t, next(seq), kind, payload))

    endpoints = {e.id: e for e in balancer._endpoints}
    remote_clusters = sorted({e.cluster for e in endpoints.values() if e.cluster != balancer.cluster})
    phase = dict(check_phase or {})

    checks: dict[str, ActiveHealthCheck] = {}
    if active_checks and policy.health_check.enabled:
        for e in endpoints.values():
            if e.cluster == balancer.cluster:
                checks[e.id] = ActiveHealthCheck(
                    e.id, policy.health_check, now=start, phase_s=phase.get(e.id, 0.0)
                )
                push(checks[e.id].next_check_at, "check", e.id)
    probes: dict[str, PeerProbe] = {}
    if peer_probes:
        for cluster in remote_clusters:
            key = GATEWAY_KEY_PREFIX + cluster
            probes[cluster] = PeerProbe(cluster, policy.peer_probe, now=start + phase.get(key, 0.0))
            push(probes[cluster].next_probe_at, "probe", cluster)

    def remote_answer(cluster: str, t: float) -> Behaviour:
        gateway = fleet.at(GATEWAY_KEY_PREFIX + cluster, t)
        if gateway.mode != OK:
            return gateway
        backends = [fleet.at(e.id, t) for e in endpoints.values() if e.cluster == cluster]
        alive = [b for b in backends if b.mode == OK]
        if not alive:
            return Behaviour(ERROR, gateway.latency_s)
        return Behaviour(OK, gateway.latency_s + min(b.latency_s for b in alive))

    request_ids = itertools.count()
    for i in itertools.count():
        t = start + i / rate_per_s  # not a running sum: arrival times stay exact
        if t >= until:
            break
        push(t, "arrive", None)

    plans: dict[int, tuple[object, float]] = {}

    def start_try(request: int, t: float) -> None:
        plan, arrived = plans[request]
        try:
            endpoint = plan.pick(t, rng)
        except NoHealthyEndpoint:
            plan.close(t)
            del plans[request]
            result.requests.append(
                RequestRecord(request, arrived, t, False, plan.state.tries, "no-endpoints")
            )
            return
        key = balancer.key_of(endpoint.id)
        behaviour = (
            remote_answer(endpoint.cluster, t) if key.startswith(GATEWAY_KEY_PREFIX) else fleet.at(key, t)
        )
        outcome, ended = outcome_of(behaviour, t, plan.try_deadline(t))
        push(ended, "end", (request, t, key, balancer.level_of(endpoint.id), outcome))

    while queue:
        now, _, kind, payload = heapq.heappop(queue)
        if kind == "arrive":
            request = next(request_ids)
            try:
                plan = balancer.begin(now, method)
            except Overloaded:
                result.requests.append(RequestRecord(request, now, now, False, 0, "overflow"))
                continue
            plans[request] = (plan, now)
            start_try(request, now)
        elif kind == "end":
            request, started, key, level, outcome = payload
            plan, arrived = plans[request]
            result.tries.append(TryRecord(request, started, now, key, level, outcome))
            decision = plan.finish_try(outcome, now)
            if decision.retry:
                start_try(request, now)
            else:
                plan.close(now)
                del plans[request]
                ok = outcome is Outcome.SUCCESS
                result.requests.append(
                    RequestRecord(request, arrived, now, ok, plan.state.tries, decision.reason)
                )
        elif kind == "check":
            check = checks[payload]
            if now >= until:
                continue
            deadline = check.started(now)
            outcome, ended = outcome_of(fleet.at(payload, now), now, deadline)
            push(ended, "check-result", (payload, outcome is Outcome.SUCCESS))
            push(check.next_check_at, "check", payload)
        elif kind == "check-result":
            key, ok = payload
            event = checks[key].record(ok, now)
            if event is not None:
                result.events.append((now, event))
                balancer.set_endpoint_health(key, checks[key].healthy, now)
        elif kind == "probe":
            probe = probes[payload]
            if now >= until:
                continue
            deadline = probe.started(now)
            gateway = fleet.at(GATEWAY_KEY_PREFIX + payload, now)
            outcome, ended = outcome_of(gateway, now, deadline)
            healthy = {
                balancer.service: sum(
                    1 for e in endpoints.values() if e.cluster == payload and fleet.at(e.id, now).mode == OK
                )
            }
            push(ended, "probe-result", (payload, outcome is Outcome.SUCCESS, ended - now, healthy))
            push(probe.next_probe_at, "probe", payload)
        elif kind == "probe-result":
            cluster, ok, rtt, healthy = payload
            probe = probes[cluster]
            event = probe.record_success(now, rtt, healthy) if ok else probe.record_failure(now)
            if event is not None:
                result.events.append((now, event))
            balancer.update_peers({c: p.view() for c, p in probes.items()}, now)
        for event in balancer.drain_events():
            result.events.append((now, event))
    return result


def demo_endpoints(service: str = "echo.demo", per_zone: int = 3) -> list[Endpoint]:
    """The DESIGN demo topology's endpoints of `service` (`echo.demo` everywhere, `hello.demo` remote only)."""
    zones = [
        ("east-1", Locality("us-east", "us-east-1a"), "127.0.1"),
        ("east-1", Locality("us-east", "us-east-1b"), "127.0.1"),
        ("east-2", Locality("us-east", "us-east-1c"), "127.0.2"),
        ("west-1", Locality("eu-west", "eu-west-1a"), "127.0.3"),
    ]
    if service == "hello.demo":
        zones = [z for z in zones if z[0] != "east-1"]
    out = []
    host = {}
    for cluster, locality, net in zones:
        for _ in range(per_zone):
            host[net] = host.get(net, 10) + 1
            out.append(Endpoint(service, cluster, f"{net}.{host[net]}", 8080, locality))
    return out


CALLER_CLUSTER = "east-1"
CALLER_LOCALITY = Locality("us-east", "us-east-1a")


def demo_balancer(
    service: str = "echo.demo", policy: ServicePolicy | None = None, *, per_zone: int = 3, now: float = 0.0
) -> Balancer:
    """A balancer in east-1/us-east-1a for `service` over `demo_endpoints()`."""
    return Balancer(
        service,
        demo_endpoints(service, per_zone),
        cluster=CALLER_CLUSTER,
        locality=CALLER_LOCALITY,
        policy=policy,
        now=now,
    )
