"""The route table: every service's rules compiled once per catalog revision into a fast matcher.

`RouteTable.match(service, request, rng)` is what the gateway calls per request. It returns a
`RouteDecision`: the rule that matched (None for the default route), the subset label selector
drawn for this request by weight, header edits for both directions, the path rewrite, timeout and
retry settings (plain values for `gateway.lb`) and the fault decision.

How it stays fast (goal: at most 5 us p50 with 100 rules per service and 1,000 services): the
service is one dict lookup; exact paths are a dict of rule indices; prefix rules (and regex rules,
under the literal prefix their pattern starts with) are a dict keyed by prefix, probed once per
distinct prefix length; rules with no path but an exact header condition are a dict keyed by that
header's value; only the remaining rules are tried for every request. Candidates are visited
group by group in rule order, and a group stops as soon as its next rule comes after the best
match found so far, so first-match-wins holds without merging or sorting anything per request.
Regular expressions are compiled once. Decisions are built at compile time (one per split arm,
a 100-slot table for the weighted draw), so a request builds none unless a fault fires.

`apply_header_edits()` is the pure header rewrite for either direction, once the balancer has
picked the destination (cluster and region decide the conditional edits).

Pure: must not import trio, socket, time or `federation`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import attrs

from gateway.policy.faults import NO_FAULT, FaultDecision, FaultSettings, decide_fault
from gateway.policy.rules import (
    NO_EDITS,
    HeaderEdits,
    HeaderOps,
    Labels,
    RetrySettings,
    RouteRule,
    RoutesConfig,
)
from registry.model import Endpoint

HeaderBlock = Sequence[tuple[Any, Any]] | Mapping[Any, Any]
Check = Callable[["RequestView", str], bool]
Entry = tuple[int, Check | None, "_CompiledRule"]


class RequestView(NamedTuple):
    """What route matching sees of one request.

    `method` and `path` are `str` (or `bytes`, decoded as Latin-1); `path` may carry its query
    string, which matching ignores. `headers` is a sequence of `(name, value)` pairs or a mapping,
    names lower-cased, all `str` or all `bytes`. A NamedTuple, not an attrs class: the gateway builds one
    per request and this is the cheapest immutable value Python has.
    """

    method: str | bytes
    path: str | bytes
    headers: HeaderBlock = ()
    source_cluster: str | None = None
    source_spiffe_id: str | None = None


@attrs.frozen(slots=True)
class PrefixRewrite:
    """Replace the matched `prefix` of the path with `replacement` (the query string is kept)."""

    prefix: str
    replacement: str

    def apply(self, path: str) -> str:
        if not path.startswith(self.prefix):
            return path
        return self.replacement + path[len(self.prefix) :]


@attrs.frozen(slots=True)
class RouteDecision:
    """What to do with one request. `rule` is None when no rule matched (the default route)."""

    rule: str | None = None
    subset: Labels = ()
    request_headers: HeaderEdits = NO_EDITS
    response_headers: HeaderEdits = NO_EDITS
    rewrite: PrefixRewrite | None = None
    timeout_s: float | None = None
    retry: RetrySettings | None = None
    fault: FaultDecision = NO_FAULT

    def rewritten_path(self, path: str) -> str:
        return path if self.rewrite is None else self.rewrite.apply(path)

    def selects(self, endpoint: Endpoint) -> bool:
        """True when `endpoint`'s labels include this decision's subset selector."""
        if not self.subset:
            return True
        labels = dict(endpoint.labels)
        return all(labels.get(k) == v for k, v in self.subset)


DEFAULT_DECISION = RouteDecision()


# --------------------------------------------------------------------------------------------- compiled


def _header_values(headers: HeaderBlock, name: str, name_b: bytes) -> list[str]:
    """Every value `headers` carries for the lower-case `name`, as `str`."""
    kind = type(headers)
    if kind is list or kind is tuple:
        # A block is all `str` or all `bytes` names (as h11 and h2 hand them over): compare one form.
        if headers and type(headers[0][0]) is bytes:
            name = name_b  # type: ignore[assignment]
        values = [v for n, v in headers if n == name]
    elif isinstance(headers, Mapping):
        value = headers.get(name)
        if value is None:
            value = headers.get(name_b)
        if value is None:
            return []
        values = list(value) if isinstance(value, list | tuple) else [value]
    else:
        values = [v for n, v in headers if n == name or n == name_b]
    if values and type(values[0]) is bytes:
        return [v.decode("latin-1") if type(v) is bytes else v for v in values]
    return values


_REGEX_SPECIAL = frozenset(".^$*+?{}[]\\|()")


def regex_literal_prefix(pattern: str) -> str:
    """A prefix every string the pattern fully matches starts with ("" when none is evident).

    Conservative: any `|` gives "", and a literal followed by a quantifier is left out.
    """
    if "|" in pattern:
        return ""
    start = 1 if pattern.startswith("^") else 0
    literal: list[str] = []
    for char in pattern[start:]:
        if char in _REGEX_SPECIAL:
            if char in "*?{+" and literal:
                literal.pop()
            break
        literal.append(char)
    return "".join(literal)


def _predicate(kind: str, *args: Any) -> Callable[[RequestView, str], bool]:
    """One residual condition as a small closure: the per-request check is a few direct calls."""
    if kind == "path":
        fullmatch = args[0].fullmatch
        return lambda request, path: fullmatch(path) is not None
    if kind == "method":
        methods = args[0]
        return lambda request, path: request.method in methods
    if kind == "cluster":
        cluster = args[0]
        return lambda request, path: request.source_cluster == cluster
    if kind == "spiffe":
        fullmatch = args[0].fullmatch
        return lambda request, path: (
            request.source_spiffe_id is not None and (fullmatch(request.source_spiffe_id) is not None)
        )
    header, name_b = args
    name = header.name
    if header.kind == "exact":
        value = header.value
        return lambda request, path: value in _header_values(request.headers, name, name_b)
    matches = header.matches
    return lambda request, path: matches(_header_values(request.headers, name, name_b))


def _all_of(predicates: tuple[Callable[[RequestView, str], bool], ...]) -> Callable[[RequestView, str], bool]:
    if len(predicates) == 1:
        return predicates[0]

    def check(request: RequestView, path: str) -> bool:
        for predicate in predicates:
            if not predicate(request, path):
                return False
        return True

    return check


class _CompiledRule:
    """One rule reduced to what the per-request check needs; `check` is None when the index decides alone."""

    __slots__ = ("check", "arms", "single", "fault")

    def __init__(self, rule: RouteRule, indexed_header: str | None) -> None:
        match = rule.match
        predicates: list[Callable[[RequestView, str], bool]] = []
        if match.path is not None and match.path.kind == "regex":
            predicates.append(_predicate("path", match.path.regex))
        if match.methods:
            methods = frozenset(match.methods) | {m.encode("latin-1") for m in match.methods}
            predicates.append(_predicate("method", methods))
        if match.source_cluster is not None:
            predicates.append(_predicate("cluster", match.source_cluster))
        if match.source_spiffe_id is not None:
            predicates.append(_predicate("spiffe", match.source_spiffe_id.regex))
        for header in match.headers:
            if header.name != indexed_header:
                predicates.append(_predicate("header", header, header.name.encode("latin-1")))
        self.check = _all_of(tuple(predicates)) if predicates else None
        rewrite = None
        if rule.rewrite_prefix is not None and match.path is not None:
            rewrite = PrefixRewrite(match.path.value, rule.rewrite_prefix)
        decisions = [
            RouteDecision(
                rule.name,
                arm.labels,
                rule.request_headers,
                rule.response_headers,
                rewrite,
                rule.timeout_s,
                rule.retry,
                NO_FAULT,
            )
            for arm in rule.split
        ]
        arms: list[RouteDecision] = []
        for decision, arm in zip(decisions, rule.split, strict=True):
            arms.extend([decision] * arm.weight)
        self.arms = tuple(arms)
        self.single = decisions[0] if len(decisions) == 1 else None
        self.fault: FaultSettings | None = rule.fault

    def decide(self, request: RequestView, rng: random.Random) -> RouteDecision:
        decision = self.single if self.single is not None else self.arms[int(rng.random() * 100.0)]
        if self.fault is not None:
            fault = decide_fault(self.fault, request.source_cluster, rng)
            if fault is not NO_FAULT:
                return attrs.evolve(decision, fault=fault)
        return decision


class _CompiledService:
    """One service's rules, indexed so a request only checks the rules it could match.

    Each rule is filed under one necessary condition that a hash lookup can test: its exact path,
    its path prefix (a regex path's literal prefix counts), or one of its exact header conditions.
    Rules with none of these are `always` checked. Every index holds `(rule number, check, rule)`
    entries in rule order; keeping the three together saves memory round trips per request.
    """

    __slots__ = (
        "rules",
        "always",
        "exact",
        "prefixes",
        "prefix_lengths",
        "prefix_first",
        "by_header",
        "header_first",
    )

    def __init__(self, rules: Iterable[RouteRule]) -> None:
        self.rules: list[_CompiledRule] = []
        always: list[Entry] = []
        exact: dict[str, list[Entry]] = {}
        prefixes: dict[str, list[Entry]] = {}
        by_header: dict[str, dict[str, list[Entry]]] = {}
        for index, rule in enumerate(rules):
            path = rule.match.path
            header = None
            if path is None or path.kind == "regex" and len(regex_literal_prefix(path.value)) < 2:
                header = next((h for h in rule.match.headers if h.kind == "exact"), None)
            compiled = _CompiledRule(rule, header.name if header is not None else None)
            self.rules.append(compiled)
            entry = (index, compiled.check, compiled)
            if path is not None and path.kind == "exact":
                exact.setdefault(path.value, []).append(entry)
            elif path is not None and path.kind == "prefix":
                prefixes.setdefault(path.value, []).append(entry)
            elif path is not None and header is None and len(regex_literal_prefix(path.value)) > 1:
                prefixes.setdefault(regex_literal_prefix(path.value), []).append(entry)
            elif header is not None:
                by_header.setdefault(header.name, {}).setdefault(header.value, []).append(entry)
            else:
                always.append(entry)
        count = len(self.rules)
        self.always = tuple(always)
        self.exact = {k: tuple(v) for k, v in exact.items()}
        self.prefixes = {k: tuple(v) for k, v in prefixes.items()}
        self.prefix_lengths = tuple(sorted({len(p) for p in prefixes}))
        self.by_header = tuple(
            (name, name.encode("latin-1"), {value: tuple(v) for value, v in values.items()})
            for name, values in by_header.items()
        )
        # The first rule filed under a prefix or a header: past it, that index cannot improve the match.
        self.prefix_first = min((v[0][0] for v in prefixes.values()), default=count)
        self.header_first = min(
            (v[0][0] for values in by_header.values() for v in values.values()), default=count
        )

    def match(self, request: RequestView, rng: random.Random) -> RouteDecision:
        # The per-request path: loops are written out (no helper calls) because this runs for
        # every request the gateway proxies; an entry's check is None when its index decides alone.
        path = request.path
        if type(path) is bytes:
            path = path.decode("latin-1")
        query = path.find("?")
        if query >= 0:
            path = path[:query]
        best = len(self.rules)
        chosen = None
        for index, check, rule in self.always:
            if check is None or check(request, path):
                best, chosen = index, rule
                break
        hit = self.exact.get(path)
        if hit is not None and hit[0][0] < best:
            for index, check, rule in hit:
                if index >= best:
                    break
                if check is None or check(request, path):
                    best, chosen = index, rule
                    break
        if self.prefix_first < best:
            prefixes = self.prefixes
            size = len(path)
            for length in self.prefix_lengths:
                if length > size:
                    break
                hit = prefixes.get(path[:length])
                if hit is not None and hit[0][0] < best:
                    for index, check, rule in hit:
                        if index >= best:
                            break
                        if check is None or check(request, path):
                            best, chosen = index, rule
                            break
        if self.header_first < best:
            for name, name_b, values in self.by_header:
                for value in _header_values(request.headers, name, name_b):
                    hit = values.get(value)
                    if hit is not None and hit[0][0] < best:
                        for index, check, rule in hit:
                            if index >= best:
                                break
                            if check is None or check(request, path):
                                best, chosen = index, rule
                                break
        if chosen is None:
            return DEFAULT_DECISION
        return chosen.decide(request, rng)


class RouteTable:
    """Every service's compiled rules at one catalog revision. Immutable once built; share it freely."""

    __slots__ = ("revision", "routes", "_services", "_matchers")

    def __init__(self, routes: RoutesConfig, revision: int = 0, previous: RouteTable | None = None) -> None:
        self.revision = revision
        self.routes = routes
        self._services: dict[str, _CompiledService] = {}
        for service, service_routes in routes.services.items():
            reused = None
            if previous is not None and previous.routes.services.get(service) == service_routes:
                reused = previous._services.get(service)
            self._services[service] = reused if reused is not None else _CompiledService(service_routes.rules)
        self._matchers = {service: compiled.match for service, compiled in self._services.items()}

    @classmethod
    def compile(
        cls,
        routes: RoutesConfig | Mapping[str, Any],
        *,
        revision: int = 0,
        services: Iterable[str] | None = None,
        endpoints: Iterable[Endpoint] | None = None,
        previous: RouteTable | None = None,
    ) -> RouteTable:
        """Validate (against the catalog's services and endpoints when given) and compile.

        Pass `services` and `endpoints` when rules are written (control-plane API, config load):
        unknown services and subsets no endpoint matches are refused then. A gateway compiling a
        new catalog revision leaves them out, so endpoints scaling to zero never discard the
        rules (requests for an empty subset get the balancer's no-endpoints answer instead), and
        passes the running table as `previous`, so services whose rules did not change keep their
        compiled form. Raises `ConfigInvalid` naming the service and the rule; a refused update
        leaves the running table as it was, since tables are never modified.
        """
        if not isinstance(routes, RoutesConfig):
            routes = RoutesConfig.from_mapping(routes)
        if services is not None:
            routes.check_against(services, endpoints or ())
        return cls(routes, revision, previous)

    def match(self, service: str, request: RequestView, rng: random.Random) -> RouteDecision:
        """The decision for one request to `service`; `DEFAULT_DECISION` when no rule matches."""
        matcher = self._matchers.get(service)
        if matcher is None:
            return DEFAULT_DECISION
        return matcher(request, rng)

    def __repr__(self) -> str:
        rules = sum(len(s.rules) for s in self._services.values())
        return f"<RouteTable revision={self.revision} services={len(self._services)} rules={rules}>"


# --------------------------------------------------------------------------------------------- headers


def _apply_ops(headers: list[tuple[Any, Any]], ops: HeaderOps, as_bytes: bool) -> list[tuple[Any, Any]]:
    drop = set(ops.remove)
    drop.update(name for name, _ in ops.set)
    if drop:
        headers = [
            (n, v)
            for n, v in headers
            if (n.decode("latin-1").lower() if type(n) is bytes else n.lower()) not in drop
        ]
    for name, value in (*ops.set, *ops.add):
        if as_bytes:
            headers.append((name.encode("latin-1"), value.encode("latin-1")))
        else:
            headers.append((name, value))
    return headers


def apply_header_edits(
    headers: HeaderBlock,
    edits: HeaderEdits,
    destination_cluster: str | None = None,
    destination_region: str | None = None,
) -> list[tuple[Any, Any]]:
    """The header block after `edits`, for a request or a response: a new list of `(name, value)` pairs.

    Unconditional edits first, then each destination-conditional edit whose cluster and region
    match the destination the balancer picked. New pairs are `bytes` when the block's names are.
    """
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    if not edits:
        return pairs
    as_bytes = bool(pairs) and type(pairs[0][0]) is bytes
    if edits.always:
        pairs = _apply_ops(pairs, edits.always, as_bytes)
    for cluster, region, ops in edits.when:
        if (cluster is None or cluster == destination_cluster) and (
            region is None or region == destination_region
        ):
            pairs = _apply_ops(pairs, ops, as_bytes)
    return pairs
