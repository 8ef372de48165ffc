"""`Balancer`: the failover decisions for one service, composed; the object the gateway calls per request.

Built from the catalog's endpoints of one service, the caller's cluster and locality, and the
service's `ServicePolicy`:

- hosts: each local endpoint is a host (key = endpoint id); each remote cluster is ONE host (key
  `gateway:<cluster>`) reached through its gateway, weighted by its healthy-backend count from the
  gateway-pair probes (`PeerView`), or by its healthy endpoints in the catalog until a probe says;
- priorities: `priority.priority_of` over the caller's locality and the failover order;
- load per priority: Envoy's arithmetic (`priority.priority_load`); a remote host counts its
  backends, so a cluster with 2 of 4 backends healthy counts as 50 % healthy, not as one address;
- inside a priority: weighted power-of-two-choices least-request (`p2c.choose`);
- passive health: `report()` feeds the `OutlierDetector`; active checks (`set_endpoint_health`)
  and peer probes (`update_peers`) feed in their verdicts; the catalog's own health is honoured
  (DRAINING endpoints take no new requests and do not count);
- per-request: `begin()` returns a `RequestPlan` holding the circuit breaker slot, the retry
  budget, the deadlines, and the tried hosts so a retry goes to another host and locality.

Use from the gateway's I/O (all times are `trio.current_time()`, `rng` a `random.Random`):

    plan = balancer.begin(now, method)              # raises Overloaded when the circuit is open
    try:
        while True:
            endpoint = plan.pick(now, rng)           # raises NoHealthyEndpoint
            deadline = plan.try_deadline(now)        # for trio.fail_at / move_on_at
            ... try the request; outcome = Outcome.SUCCESS / TIMEOUT / ... or the HTTP status
            if not plan.finish_try(outcome, now, status=status).retry:
                break
    finally:
        plan.close(now)

A route's own settings (`gateway.policy` rules: `timeout_s`, `attempts`, `per_try_timeout_s`,
`retry_on`) come in as `begin(now, method, retry=..., timeout=...)` with the pair from
`balancer.policy.for_route(...)`. `BalancerSet` keeps one balancer per service across catalog
reloads and is callable as the routing table's picker factory.

`pick(now, rng, exclude=())` and `report(endpoint_id, outcome, now)` can also be used directly
(the `gateway.picker.Picker` seam): every `pick` must be followed by one `report` (it also ends
the in-flight count that least-request compares). `update(endpoints, now)` takes a new catalog
and keeps detector, health and in-flight state for the hosts that remain. `snapshot(now)` gives
per-priority load shares for metrics; `drain_events()` the ejections, returns and health changes.

Pure: no trio import, no clock reads, no I/O.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Mapping
from operator import attrgetter

import attrs

from gateway.errors import NoHealthyEndpoint
from gateway.lb import p2c
from gateway.lb.circuit import CircuitBreaker, Resource
from gateway.lb.health import PeerView
from gateway.lb.outlier import Outcome, OutlierDetector
from gateway.lb.policy import RetryPolicy, ServicePolicy, TimeoutPolicy
from gateway.lb.priority import PriorityLoad, choose_priority, priority_load, priority_of, region_order
from gateway.lb.retry import RetryBudget, RetryDecision, RetryState
from registry.model import Catalog, Endpoint, Health, Locality

GATEWAY_KEY_PREFIX = "gateway:"
USABLE = (Health.HEALTHY, Health.UNKNOWN)  # UNKNOWN counts as healthy, as Envoy treats EDS UNKNOWN
_ACTIVE = attrgetter("active")


@attrs.define(eq=False)
class Host:
    """One thing the balancer can pick: a local endpoint, or a remote cluster's gateway."""

    key: str
    cluster: str
    locality: Locality
    remote: bool
    endpoints: tuple[Endpoint, ...]
    level: int = 0
    weight: float = 1.0
    total: int = 1
    healthy_units: int = 1
    available: bool = True
    active: int = 0


@attrs.frozen
class LevelSnapshot:
    level: int
    load_percent: int
    health: int
    healthy: int
    total: int
    panic: bool
    hosts: tuple[str, ...]


@attrs.frozen
class BalancerSnapshot:
    """Per-priority state for metrics and `/catalog`: which level is active, what is ejected."""

    service: str
    at: float
    levels: tuple[LevelSnapshot, ...]
    active_priority: int | None
    ejected: tuple[str, ...]
    unhealthy: tuple[str, ...]

    @property
    def loads(self) -> tuple[int, ...]:
        return tuple(level.load_percent for level in self.levels)


class Balancer:
    """Failover state for one service as seen from one gateway (see the module docstring)."""

    def __init__(
        self,
        service: str,
        endpoints: Iterable[Endpoint],
        *,
        cluster: str,
        locality: Locality,
        policy: ServicePolicy | None = None,
        peers: Mapping[str, PeerView] | None = None,
        now: float = 0.0,
    ) -> None:
        self.service = service
        self.cluster = cluster
        self.locality = locality
        self.policy = policy or ServicePolicy()
        self.detector = OutlierDetector(self.policy.outlier, epoch=now)
        self.breaker = CircuitBreaker(service, self.policy.circuit_breaker)
        self.budget = RetryBudget(self.policy.retry.budget_percent, self.policy.retry.min_retry_concurrency)
        self.peers: dict[str, PeerView] = dict(peers or {})
        self._endpoint_health: dict[str, bool] = {}
        self._events: list[object] = []
        self._hosts: dict[str, Host] = {}
        self._key_of: dict[str, str] = {}
        self._levels: list[list[Host]] = []
        self._endpoints: tuple[Endpoint, ...] = ()
        self._load = PriorityLoad((), (), 0, ())
        self._candidates: list[list[Host]] = []
        self._weighted: list[p2c.WeightedHosts[Host]] = []
        self._dirty = True
        self._next_return: float | None = None
        self._last_now = now
        self._source: tuple[Endpoint, ...] = ()
        self.update(endpoints, now)

    @classmethod
    def from_catalog(
        cls,
        catalog: Catalog,
        service: str,
        *,
        locality: Locality,
        policy: ServicePolicy | None = None,
        peers: Mapping[str, PeerView] | None = None,
        now: float = 0.0,
    ) -> Balancer:
        return cls(
            service,
            catalog.endpoints_of(service),
            cluster=catalog.cluster,
            locality=locality,
            policy=policy,
            peers=peers,
            now=now,
        )

    # -- inputs ------------------------------------------------------------------------------

    def update(self, endpoints: Iterable[Endpoint], now: float | None = None) -> None:
        """A new catalog: rebuild hosts and priorities, keeping state for hosts that remain.

        `now` defaults to the latest time the balancer has seen (a catalog reload may not know it).
        """
        now = self._last_now if now is None else max(now, self._last_now)
        self._endpoints = tuple(
            e for e in endpoints if e.service == self.service and e.health is not Health.DRAINING
        )
        self._rebuild(now)

    def update_peers(self, peers: Mapping[str, PeerView], now: float) -> None:
        """New gateway-pair probe views (liveness, RTT, healthy counts), keyed by cluster."""
        self.peers = dict(peers)
        self._rebuild(now)

    def set_endpoint_health(self, endpoint_id: str, healthy: bool, now: float) -> None:
        """An active health-check verdict for a local endpoint. Turning healthy also ends an outlier
        ejection early when the policy says so (`OutlierPolicy.uneject_on_healthy_check`)."""
        if self._endpoint_health.get(endpoint_id, True) != healthy:
            self._endpoint_health[endpoint_id] = healthy
            self._dirty = True
            if healthy and self.policy.outlier.uneject_on_healthy_check:
                self._events.extend(self.detector.return_now(endpoint_id, now))

    def _rebuild(self, now: float) -> None:
        local = sorted((e for e in self._endpoints if e.cluster == self.cluster), key=lambda e: e.id)
        remote: dict[str, list[Endpoint]] = {}
        for e in self._endpoints:
            if e.cluster != self.cluster:
                remote.setdefault(e.cluster, []).append(e)
        regions = {e.locality.region for e in self._endpoints}
        rtt_by_region: dict[str, float] = {}
        for cluster, group in remote.items():
            view = self.peers.get(cluster)
            if view is not None and view.alive and view.rtt_s is not None:
                for region in {e.locality.region for e in group}:
                    rtt_by_region[region] = min(view.rtt_s, rtt_by_region.get(region, view.rtt_s))
        order = region_order(self.locality.region, regions, self.policy.failover.regions, rtt_by_region)
        old = self._hosts
        hosts: dict[str, Host] = {}
        key_of: dict[str, str] = {}
        for e in local:
            host = Host(
                e.id, e.cluster, e.locality, False, (e,), priority_of(self.locality, e.locality, order)
            )
            hosts[host.key] = host
            key_of[e.id] = host.key
        for cluster in sorted(remote):
            group = remote[cluster]

            def rank(loc: Locality, group: list[Endpoint] = group) -> tuple[int, int, str]:
                return (
                    priority_of(self.locality, loc, order),
                    -sum(1 for e in group if e.locality == loc),
                    str(loc),
                )

            best = min({e.locality for e in group}, key=rank)
            ordered = tuple(sorted(group, key=lambda e: (e.health not in USABLE, e.locality != best, e.id)))
            host = Host(
                GATEWAY_KEY_PREFIX + cluster,
                cluster,
                best,
                True,
                ordered,
                priority_of(self.locality, best, order),
            )
            hosts[host.key] = host
            for e in group:
                key_of[e.id] = host.key
        for key, host in hosts.items():
            if key in old:
                host.active = old[key].active
        self._hosts = hosts
        self._key_of = key_of
        levels: list[list[Host]] = [[] for _ in range(2 + len(order))]
        for host in hosts.values():
            levels[host.level].append(host)
        self._levels = levels
        self.detector.sync(hosts, now)
        local_ids = {e.id for e in local}
        self._endpoint_health = {k: v for k, v in self._endpoint_health.items() if k in local_ids}
        self._dirty = True

    # -- state -------------------------------------------------------------------------------

    def _refresh(self, now: float) -> None:
        if now > self._last_now:
            self._last_now = now
        if not self._dirty and (self._next_return is None or now < self._next_return):
            return
        self._events.extend(self.detector.expire(now))
        for host in self._hosts.values():
            ejected = self.detector.is_ejected(host.key)
            if host.remote:
                view = self.peers.get(host.cluster)
                reported = view.healthy_count(self.service) if view is not None else None
                count = (
                    reported if reported is not None else sum(1 for e in host.endpoints if e.health in USABLE)
                )
                alive = view.alive if view is not None else True
                host.total = max(len(host.endpoints), count, 1)
                host.healthy_units = min(host.total, count) if alive and not ejected else 0
                host.weight = float(max(count, 1))
            else:
                endpoint = host.endpoints[0]
                ok = endpoint.health in USABLE and self._endpoint_health.get(endpoint.id, True)
                host.total = 1
                host.healthy_units = 1 if ok and not ejected else 0
                host.weight = float(endpoint.weight)
            host.available = host.healthy_units > 0
        failover = self.policy.failover
        self._load = priority_load(
            [(sum(h.healthy_units for h in level), sum(h.total for h in level)) for level in self._levels],
            overprovisioning_factor=failover.overprovisioning_factor,
            panic_threshold_percent=failover.panic_threshold_percent,
        )
        self._candidates = [
            list(level) if self._load.panic[i] else [h for h in level if h.available]
            for i, level in enumerate(self._levels)
        ]
        self._weighted = [p2c.WeightedHosts(c, [h.weight for h in c]) for c in self._candidates]
        self._next_return = self.detector.next_return()
        self._dirty = False

    def key_of(self, endpoint_id: str) -> str | None:
        """The host key an endpoint id belongs to (itself, or `gateway:<cluster>` when remote)."""
        return self._key_of.get(endpoint_id, endpoint_id if endpoint_id in self._hosts else None)

    def level_of(self, endpoint_id: str) -> int | None:
        key = self.key_of(endpoint_id)
        return None if key is None else self._hosts[key].level

    # -- per request -------------------------------------------------------------------------

    def pick(self, now: float, rng: random.Random, exclude: Collection[str] = ()) -> Endpoint:
        """Choose an endpoint; `exclude` (endpoint ids or host keys already tried) steers retries.

        A remote cluster is returned as one of its endpoints (the gateway sends the request to
        that cluster's gateway). Raises `NoHealthyEndpoint` when nothing can be chosen.
        """
        self._refresh(now)
        if not self._hosts:
            raise NoHealthyEndpoint(f"{self.service}: no endpoints in the catalog")
        host = self._choose(rng, exclude) if exclude else self._choose_fresh(rng)
        if host is None:
            raise NoHealthyEndpoint(f"{self.service}: no healthy endpoint in any locality")
        host.active += 1
        return host.endpoints[0]

    def _p2c(self, hosts: list[Host], rng: random.Random) -> Host:
        return p2c.choose(hosts, rng, weight=attrgetter("weight"), active=_ACTIVE)

    def _choose_fresh(self, rng: random.Random) -> Host | None:
        level = choose_priority(self._load.loads, rng)
        weighted = self._weighted[level]
        return weighted.choose(rng, _ACTIVE) if len(weighted) else None

    def _choose(self, rng: random.Random, exclude: Collection[str]) -> Host | None:
        excluded = {self.key_of(x) or x for x in exclude}
        avoid: set[Locality] = set()
        if self.policy.retry.prefer_other_locality:
            avoid = {self._hosts[k].locality for k in excluded if k in self._hosts}
        filters = (
            lambda h: h.key not in excluded and h.locality not in avoid,
            lambda h: h.key not in excluded,
        )
        for keep in filters:
            per_level = [[h for h in candidates if keep(h)] for candidates in self._candidates]
            loads = [load if per_level[i] else 0 for i, load in enumerate(self._load.loads)]
            if sum(loads) > 0:
                level = rng.choices(range(len(loads)), weights=loads)[0]
            else:
                level = next((i for i, hosts in enumerate(per_level) if hosts), None)
                if level is None:
                    continue
            return self._p2c(per_level[level], rng)
        # Everything was tried already: try again where a fresh request would go.
        return self._choose_fresh(rng)

    def report(self, endpoint_id: str, outcome: Outcome | str | int, now: float) -> None:
        """How a try to `endpoint_id` ended (an `Outcome`, its string, or an HTTP status)."""
        key = self.key_of(endpoint_id)
        if key is None:
            return  # removed by a catalog update while the request was in flight
        host = self._hosts[key]
        host.active = max(0, host.active - 1)
        events = self.detector.record(key, outcome, now)
        if events:
            self._events.extend(events)
            self._dirty = True

    def begin(
        self,
        now: float,
        method: str = "GET",
        *,
        retry: RetryPolicy | None = None,
        timeout: TimeoutPolicy | None = None,
    ) -> RequestPlan:
        """Admit one request (circuit breaker) and return its plan; raises `Overloaded` when open."""
        return RequestPlan(self, method, now, retry or self.policy.retry, timeout or self.policy.timeout)

    # -- outputs -----------------------------------------------------------------------------

    def snapshot(self, now: float | None = None) -> BalancerSnapshot:
        """Per-priority loads, health and panic, ejected and unhealthy hosts, at `now` (default: the
        latest time the balancer has seen)."""
        now = self._last_now if now is None else now
        self._refresh(now)
        levels = tuple(
            LevelSnapshot(
                level=i,
                load_percent=self._load.loads[i],
                health=self._load.health[i],
                healthy=sum(h.healthy_units for h in hosts),
                total=sum(h.total for h in hosts),
                panic=self._load.panic[i],
                hosts=tuple(sorted(h.key for h in hosts)),
            )
            for i, hosts in enumerate(self._levels)
        )
        unhealthy = tuple(sorted(k for k, ok in self._endpoint_health.items() if not ok))
        return BalancerSnapshot(
            self.service, now, levels, self._load.active_priority, self.detector.ejected(), unhealthy
        )

    def drain_events(self) -> list[object]:
        """Outlier and circuit events since the last call (for logs and metrics)."""
        events, self._events = self._events + self.breaker.drain_events(), []
        return events

    def __repr__(self) -> str:
        loads = "/".join(str(x) for x in self._load.loads)
        return (
            f"<Balancer {self.service} from {self.cluster} {self.locality} hosts={len(self._hosts)} "
            f"loads={loads} ejected={list(self.detector.ejected())}>"
        )


class BalancerSet:
    """The balancers of every service, kept across catalog reloads so outlier state survives them.

    Callable as the routing table's picker factory (`gateway.routes.PickerFactory`:
    `(endpoints, cluster, locality) -> Picker`): the first call for a service builds its
    `Balancer`, later calls (a new routing table after a reload) update that same balancer with
    the new endpoints. The east-west listener's local-only view is kept apart from the outbound
    view. Policies come from `[policies]` (`ServicePolicy.from_policies`); a service without one
    gets `default`.
    """

    def __init__(
        self, policies: Mapping[str, ServicePolicy] | None = None, *, default: ServicePolicy | None = None
    ):
        self.policies = dict(policies or {})
        self.default = default or ServicePolicy()
        self.peers: dict[str, PeerView] = {}
        self._balancers: dict[tuple[str, bool], Balancer] = {}

    def __call__(self, endpoints: Iterable[Endpoint], cluster: str, locality: Locality) -> Balancer:
        endpoints = tuple(endpoints)
        if not endpoints:
            raise NoHealthyEndpoint("no endpoints to balance over")
        service = endpoints[0].service
        local_only = all(e.cluster == cluster for e in endpoints)
        key = (service, local_only)
        policy = self.policies.get(service, self.default)
        balancer = self._balancers.get(key)
        if balancer is None or (balancer.cluster, balancer.locality, balancer.policy) != (
            cluster,
            locality,
            policy,
        ):
            balancer = Balancer(
                service, endpoints, cluster=cluster, locality=locality, policy=policy, peers=self.peers
            )
            self._balancers[key] = balancer
        elif balancer._source != endpoints:
            balancer.update(endpoints)
        balancer._source = endpoints
        return balancer

    def update_peers(self, peers: Mapping[str, PeerView], now: float) -> None:
        """New gateway-pair probe views for every balancer."""
        self.peers = dict(peers)
        for balancer in self._balancers.values():
            balancer.update_peers(self.peers, now)

    def set_policies(self, policies: Mapping[str, ServicePolicy]) -> None:
        """New `[policies]`: a service whose policy changed gets a fresh balancer on its next use."""
        self.policies = dict(policies)

    def balancers(self) -> list[Balancer]:
        return list(self._balancers.values())


class RequestPlan:
    """One request's passage through the balancer: admission, tries, retries, release."""

    def __init__(
        self, balancer: Balancer, method: str, now: float, retry: RetryPolicy, timeout: TimeoutPolicy
    ):
        balancer.breaker.acquire(Resource.REQUESTS, now)
        self.balancer = balancer
        self.state = RetryState(method, now, retry, timeout)
        self.tried: list[str] = []
        self.current: Endpoint | None = None
        self.closed = False
        self._retrying = False
        balancer.budget.active_requests += 1

    def pick(self, now: float, rng: random.Random) -> Endpoint:
        endpoint = self.balancer.pick(now, rng, exclude=self.tried)
        self.tried.append(endpoint.id)
        self.current = endpoint
        self.state.tries += 1
        return endpoint

    def try_deadline(self, now: float) -> float | None:
        return self.state.try_deadline(now)

    def finish_try(
        self, outcome: Outcome | str | int, now: float, *, status: int | None = None
    ) -> RetryDecision:
        """Report the try's outcome to the balancer and decide whether to try again."""
        if self.current is None:
            raise RuntimeError("finish_try() without pick()")
        self.balancer.report(self.current.id, outcome, now)
        self.current = None
        budget = self.balancer.budget
        if self._retrying:
            budget.active_retries = max(0, budget.active_retries - 1)
            self._retrying = False
        decision = self.state.decide(outcome, now, status=status, budget=budget)
        if decision.retry:
            budget.active_retries += 1
            self._retrying = True
        return decision

    def close(self, now: float) -> None:
        if self.closed:
            return
        self.closed = True
        budget = self.balancer.budget
        budget.active_requests = max(0, budget.active_requests - 1)
        if self._retrying:
            budget.active_retries = max(0, budget.active_retries - 1)
            self._retrying = False
        if self.current is not None:
            self.balancer.report(self.current.id, Outcome.CANCELLED, now)
            self.current = None
        self.balancer.breaker.release(Resource.REQUESTS, now)
