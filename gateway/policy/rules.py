"""Route rules: the validated, frozen values behind `[[routes."<service>"]]` in the cluster config.

A service's rules are tried in order and the first whose match holds wins (no rule matching means
the service's default route: every endpoint, no edits). A rule matches on the path (exact, prefix
or regular expression, always on the path without its query string), the method, request headers
(exact, prefix, regular expression, present or absent; names are case-insensitive and a header
sent several times matches when any of its values does), the source cluster and the source SPIFFE
ID (a glob: `*` stays inside one path segment, `**` spans segments). Its actions: a subset of
endpoints by labels or weighted subsets, header add/set/remove on the request and the response
(optionally only when the call leaves for a given destination cluster or region), a path-prefix
rewrite, timeout and retry settings (plain values handed to `gateway.lb`) and fault injection.

Everything is checked when written, and every refusal is one `ConfigInvalid` line naming the
service and the rule: `checkout.shop route "canary": weights sum to 95, not 100`. Checks that
need the catalog (unknown services, subsets no endpoint matches) are `RoutesConfig.check_against()`.
A rule fully shadowed by an earlier one (every request it matches, the earlier one matches first)
is refused as unreachable; rules that merely overlap are fine, the first one wins.

Pure: must not import trio, socket, time or `federation`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import attrs

from gateway.errors import ConfigInvalid
from gateway.policy.faults import FaultSettings
from registry.errors import ValidationError
from registry.model import DNS1123_LABEL, Catalog, Endpoint, parse_service_key

# RFC 9110 section 5.6.2: token = 1*tchar.
TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# RFC 9110 section 5.5: a field value has no CR, LF or NUL (nor other controls but HTAB), and no
# leading or trailing whitespace.
FIELD_VALUE = re.compile(r"^(?:[\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?$")
# The retry conditions `gateway.lb`'s retry policy understands (`gateway.lb.policy.RETRY_ON`), and
# its default when a route gives none.
RETRY_ON = ("connect-failure", "reset", "503", "gateway-error", "5xx")
DEFAULT_RETRY_ON = ("connect-failure", "reset", "503", "gateway-error")
MAX_ATTEMPTS = 10
MAX_TIMEOUT_S = 3600.0
RULE_KEYS = (
    "name",
    "match",
    "subset",
    "split",
    "request_headers",
    "response_headers",
    "when_leaving_for",
    "rewrite_prefix",
    "timeout_s",
    "retry",
    "fault",
)
MATCH_KEYS = ("path", "path_prefix", "path_regex", "method", "headers", "source_cluster", "source_spiffe_id")
HEADER_MATCH_KINDS = ("exact", "prefix", "regex", "present")
HEADER_OPS_KEYS = ("add", "set", "remove")
LEAVING_KEYS = ("cluster", "region", "request_headers", "response_headers")
RETRY_KEYS = ("attempts", "per_try_timeout_s", "retry_on")

Labels = tuple[tuple[str, str], ...]


def _fail(where: str, message: str) -> ConfigInvalid:
    return ConfigInvalid(f"{where}: {message}")


def _table(where: str, field: str, value: Any, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(where, f"{field}: must be a table")
    unknown = sorted(str(k) for k in set(value) - set(allowed))
    if unknown:
        raise _fail(where, f"{field}: unknown key {unknown[0]!r} (known: {', '.join(allowed)})")
    return value


def _string(where: str, field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(where, f"{field}: {value!r} is not a string")
    return value


def _regex(where: str, field: str, value: Any) -> re.Pattern[str]:
    text = _string(where, field, value)
    try:
        return re.compile(text)
    except re.error as exc:
        detail = str(exc).replace("\n", " ")
        raise _fail(where, f"{field}: invalid regular expression {text!r}: {detail}") from None


def _header_name(where: str, field: str, value: Any) -> str:
    if not isinstance(value, str) or not TOKEN.fullmatch(value):
        raise _fail(where, f"{field}: header name {value!r} is not an RFC 9110 token")
    return value.lower()


def _header_value(where: str, field: str, value: Any) -> str:
    if not isinstance(value, str) or not FIELD_VALUE.fullmatch(value):
        raise _fail(where, f"{field}: {value!r} is not a valid header value")
    return value


def _cluster(where: str, field: str, value: Any) -> str:
    if not isinstance(value, str) or not DNS1123_LABEL.fullmatch(value):
        raise _fail(where, f"{field}: {value!r} is not a cluster name")
    return value


def _seconds(where: str, field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(where, f"{field}: {value!r} is not a number of seconds")
    if not 0 < value <= MAX_TIMEOUT_S:
        raise _fail(where, f"{field}: {value!r} is not in (0, {MAX_TIMEOUT_S:g}]")
    return float(value)


def _path(where: str, field: str, value: Any) -> str:
    text = _string(where, field, value)
    if not text.startswith("/") or "?" in text or any(c in text for c in " \t\r\n"):
        raise _fail(where, f"{field}: {text!r} is not a path (starts with '/', no query, no spaces)")
    return text


def _labels(where: str, field: str, value: Any) -> Labels:
    if not isinstance(value, Mapping):
        raise _fail(where, f'{field}: must be a table of labels, e.g. {{ version = "v2" }}')
    for key, val in value.items():
        if not isinstance(key, str) or not isinstance(val, str) or not key:
            raise _fail(where, f"{field}: label {key!r}={val!r} must be non-empty strings")
    return tuple(sorted(value.items()))


def format_labels(labels: Labels) -> str:
    """`version=v2,zone=a` (or `*` for the whole service), as the errors and the access log show subsets."""
    return ",".join(f"{k}={v}" for k, v in labels) if labels else "*"


# --------------------------------------------------------------------------------------------- matches


@attrs.frozen
class PathMatch:
    """`exact`, `prefix` (plain string prefix, as Envoy's `prefix`) or `regex` (full match) on the path."""

    kind: str
    value: str
    regex: re.Pattern[str] | None = attrs.field(default=None, eq=False, repr=False)

    def matches(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self.value
        if self.kind == "prefix":
            return path.startswith(self.value)
        assert self.regex is not None
        return self.regex.fullmatch(path) is not None

    def covers(self, other: PathMatch) -> bool:
        """True when every path `other` matches, this matches too (a sound, not complete, check)."""
        if self.kind == "prefix":
            return other.kind in ("exact", "prefix") and other.value.startswith(self.value)
        if self.kind == "exact":
            return other.kind == "exact" and other.value == self.value
        if other.kind == "regex":
            return other.value == self.value
        return other.kind == "exact" and self.matches(other.value)


@attrs.frozen
class HeaderMatch:
    """One header condition: `exact`, `prefix`, `regex` (full match) on any value, `present` or `absent`."""

    name: str
    kind: str
    value: str = ""
    regex: re.Pattern[str] | None = attrs.field(default=None, eq=False, repr=False)

    def matches(self, values: Iterable[str]) -> bool:
        """`values`: every value the request carries for this header (empty when it has none)."""
        values = list(values)
        if self.kind == "absent":
            return not values
        if self.kind == "present":
            return bool(values)
        return any(self.matches_value(v) for v in values)

    def matches_value(self, value: str) -> bool:
        if self.kind == "exact":
            return value == self.value
        if self.kind == "prefix":
            return value.startswith(self.value)
        if self.kind == "regex":
            assert self.regex is not None
            return self.regex.fullmatch(value) is not None
        return self.kind == "present"

    def implied_by(self, other: HeaderMatch) -> bool:
        """True when a request satisfying `other` (same header name) always satisfies this condition."""
        if self.kind == "absent" or other.kind == "absent":
            return self.kind == other.kind
        if self.kind == "present":
            return True
        if other.kind == "exact":
            return self.matches_value(other.value)
        if other.kind == "prefix":
            return self.kind == "prefix" and other.value.startswith(self.value)
        return self.kind == other.kind == "regex" and self.value == other.value


@attrs.frozen
class SpiffeGlob:
    """A SPIFFE ID pattern: `*` matches within one path segment, `**` across segments."""

    pattern: str
    regex: re.Pattern[str] = attrs.field(eq=False, repr=False)

    @classmethod
    def parse(cls, where: str, value: Any) -> SpiffeGlob:
        text = _string(where, "match.source_spiffe_id", value)
        if (
            not text.startswith("spiffe://")
            or len(text) <= len("spiffe://")
            or any(c.isspace() for c in text)
        ):
            raise _fail(where, f"match.source_spiffe_id: {text!r} is not a spiffe:// ID pattern")
        parts = re.split(r"(\*\*|\*)", text)
        body = "".join(".*" if p == "**" else "[^/]*" if p == "*" else re.escape(p) for p in parts)
        return cls(text, re.compile(body))

    def matches(self, spiffe_id: str | None) -> bool:
        return spiffe_id is not None and self.regex.fullmatch(spiffe_id) is not None

    def covers(self, other: SpiffeGlob) -> bool:
        return self.pattern == other.pattern or ("*" not in other.pattern and self.matches(other.pattern))


@attrs.frozen
class Match:
    """The conditions of one rule; all must hold. An empty `Match` matches every request."""

    path: PathMatch | None = None
    methods: frozenset[str] = frozenset()
    headers: tuple[HeaderMatch, ...] = ()
    source_cluster: str | None = None
    source_spiffe_id: SpiffeGlob | None = None

    @property
    def is_catch_all(self) -> bool:
        return self == Match()

    def covers(self, other: Match) -> bool:
        """True when every request `other` matches, this matches too (so a later `other` is unreachable).

        Sound but not complete: it never calls a reachable rule unreachable, and it finds the cases
        operators write by mistake (an earlier catch-all, an earlier prefix covering a later one).
        """
        if self.path is not None and (other.path is None or not self.path.covers(other.path)):
            return False
        if self.methods and (not other.methods or not other.methods <= self.methods):
            return False
        if self.source_cluster is not None and self.source_cluster != other.source_cluster:
            return False
        if self.source_spiffe_id is not None and (
            other.source_spiffe_id is None or not self.source_spiffe_id.covers(other.source_spiffe_id)
        ):
            return False
        theirs = {h.name: h for h in other.headers}
        for mine in self.headers:
            # A rule with no condition on this header takes requests with and without it.
            if mine.name not in theirs or not mine.implied_by(theirs[mine.name]):
                return False
        return True

    @classmethod
    def from_mapping(cls, where: str, value: Any) -> Match:
        table = _table(where, "match", value, MATCH_KEYS)
        paths = [k for k in ("path", "path_prefix", "path_regex") if k in table]
        if len(paths) > 1:
            raise _fail(where, f"match: {paths[0]} and {paths[1]} cannot be combined")
        path = None
        if "path" in table:
            path = PathMatch("exact", _path(where, "match.path", table["path"]))
        elif "path_prefix" in table:
            path = PathMatch("prefix", _path(where, "match.path_prefix", table["path_prefix"]))
        elif "path_regex" in table:
            regex = _regex(where, "match.path_regex", table["path_regex"])
            path = PathMatch("regex", regex.pattern, regex)
        methods: frozenset[str] = frozenset()
        if "method" in table:
            raw = table["method"]
            items = [raw] if isinstance(raw, str) else raw
            if not isinstance(items, list | tuple) or not items:
                raise _fail(where, f"match.method: {raw!r} is not a method or a list of methods")
            for item in items:
                if not isinstance(item, str) or not TOKEN.fullmatch(item):
                    raise _fail(where, f"match.method: {item!r} is not an HTTP method (RFC 9110 token)")
            methods = frozenset(items)
        headers: list[HeaderMatch] = []
        if "headers" in table:
            raw_headers = table["headers"]
            if not isinstance(raw_headers, Mapping):
                raise _fail(where, "match.headers: must be a table of header name = condition")
            seen: set[str] = set()
            for raw_name, condition in raw_headers.items():
                name = _header_name(where, "match.headers", raw_name)
                if name in seen:
                    raise _fail(where, f"match.headers: header {name!r} named twice")
                seen.add(name)
                headers.append(_header_match(where, name, condition))
        source_cluster = None
        if "source_cluster" in table:
            source_cluster = _cluster(where, "match.source_cluster", table["source_cluster"])
        spiffe = SpiffeGlob.parse(where, table["source_spiffe_id"]) if "source_spiffe_id" in table else None
        return cls(path, methods, tuple(sorted(headers, key=lambda h: h.name)), source_cluster, spiffe)


def _header_match(where: str, name: str, condition: Any) -> HeaderMatch:
    field = f"match.headers.{name}"
    if isinstance(condition, str):
        condition = {"exact": condition}
    table = _table(where, field, condition, HEADER_MATCH_KINDS)
    if len(table) != 1:
        raise _fail(where, f"{field}: give exactly one of {', '.join(HEADER_MATCH_KINDS)}")
    kind, value = next(iter(table.items()))
    if kind == "present":
        if not isinstance(value, bool):
            raise _fail(where, f"{field}.present: {value!r} is not true or false")
        return HeaderMatch(name, "present" if value else "absent")
    if kind == "regex":
        regex = _regex(where, f"{field}.regex", value)
        return HeaderMatch(name, "regex", regex.pattern, regex)
    return HeaderMatch(name, kind, _string(where, f"{field}.{kind}", value))


# --------------------------------------------------------------------------------------------- actions


@attrs.frozen
class HeaderOps:
    """Edits to one header block, applied in this order: `remove`, then `set` (replace), then `add` (append)."""

    add: tuple[tuple[str, str], ...] = ()
    set: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.add or self.set or self.remove)

    @classmethod
    def from_mapping(cls, where: str, field: str, value: Any) -> HeaderOps:
        table = _table(where, field, value, HEADER_OPS_KEYS)
        pairs: dict[str, tuple[tuple[str, str], ...]] = {}
        for op in ("add", "set"):
            raw = table.get(op, {})
            if not isinstance(raw, Mapping):
                raise _fail(where, f"{field}.{op}: must be a table of header name = value")
            pairs[op] = tuple(
                (_header_name(where, f"{field}.{op}", k), _header_value(where, f"{field}.{op}.{k}", v))
                for k, v in raw.items()
            )
        raw_remove = table.get("remove", [])
        if not isinstance(raw_remove, list | tuple):
            raise _fail(where, f"{field}.remove: must be a list of header names")
        remove = tuple(_header_name(where, f"{field}.remove", n) for n in raw_remove)
        for name in ("host", "content-length", "transfer-encoding"):
            for op, items in (("add", pairs["add"]), ("set", pairs["set"])):
                if any(k == name for k, _ in items):
                    raise _fail(
                        where, f"{field}.{op}: header {name!r} belongs to the protocol, not to route rules"
                    )
        return cls(pairs["add"], pairs["set"], remove)


@attrs.frozen
class DestinationEdits:
    """Header edits applied only when the chosen endpoint is in `cluster` and/or `region` (None: any)."""

    cluster: str | None
    region: str | None
    request: HeaderOps
    response: HeaderOps

    def applies(self, destination_cluster: str | None, destination_region: str | None) -> bool:
        return (self.cluster is None or self.cluster == destination_cluster) and (
            self.region is None or self.region == destination_region
        )

    @classmethod
    def from_mapping(cls, where: str, field: str, value: Any) -> DestinationEdits:
        table = _table(where, field, value, LEAVING_KEYS)
        if "cluster" not in table and "region" not in table:
            raise _fail(where, f"{field}: name a cluster or a region")
        if "request_headers" not in table and "response_headers" not in table:
            raise _fail(where, f"{field}: give request_headers or response_headers")
        cluster = _cluster(where, f"{field}.cluster", table["cluster"]) if "cluster" in table else None
        region = None
        if "region" in table:
            region = table["region"]
            if not isinstance(region, str) or not DNS1123_LABEL.fullmatch(region):
                raise _fail(where, f"{field}.region: {region!r} is not a region name")
        request = HeaderOps.from_mapping(where, f"{field}.request_headers", table.get("request_headers", {}))
        response = HeaderOps.from_mapping(
            where, f"{field}.response_headers", table.get("response_headers", {})
        )
        return cls(cluster, region, request, response)


@attrs.frozen
class HeaderEdits:
    """Everything a rule does to one direction's headers: unconditional ops, then destination-conditional ones."""

    always: HeaderOps = HeaderOps()
    when: tuple[tuple[str | None, str | None, HeaderOps], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.always or self.when)


NO_EDITS = HeaderEdits()


@attrs.frozen
class WeightedSubset:
    """One arm of a split: endpoints whose labels include `labels`, chosen for `weight` % of requests."""

    labels: Labels
    weight: int


@attrs.frozen
class RetrySettings:
    """The route's retry settings, validated here and turned into `gateway.lb`'s retry policy by the gateway.

    `attempts` counts every try, the first included (1 = no retry).
    """

    attempts: int
    per_try_timeout_s: float | None = None
    retry_on: tuple[str, ...] = DEFAULT_RETRY_ON

    @classmethod
    def from_mapping(cls, where: str, value: Any) -> RetrySettings:
        table = _table(where, "retry", value, RETRY_KEYS)
        if "attempts" not in table:
            raise _fail(where, "retry.attempts is required")
        attempts = table["attempts"]
        if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= MAX_ATTEMPTS:
            raise _fail(where, f"retry.attempts: {attempts!r} is not an integer in 1-{MAX_ATTEMPTS}")
        per_try = None
        if "per_try_timeout_s" in table:
            per_try = _seconds(where, "retry.per_try_timeout_s", table["per_try_timeout_s"])
        retry_on = DEFAULT_RETRY_ON
        if "retry_on" in table:
            raw = table["retry_on"]
            if not isinstance(raw, list | tuple) or not raw:
                raise _fail(where, f"retry.retry_on: must be a non-empty list of {', '.join(RETRY_ON)}")
            for item in raw:
                if item not in RETRY_ON:
                    raise _fail(where, f"retry.retry_on: {item!r} is not one of {', '.join(RETRY_ON)}")
            retry_on = tuple(dict.fromkeys(raw))
        return cls(attempts, per_try, retry_on)


@attrs.frozen
class RouteRule:
    """One named rule of one service: a `Match` and what to do with the requests it takes."""

    service: str
    name: str
    match: Match = Match()
    split: tuple[WeightedSubset, ...] = (WeightedSubset((), 100),)
    request_headers: HeaderEdits = NO_EDITS
    response_headers: HeaderEdits = NO_EDITS
    rewrite_prefix: str | None = None
    timeout_s: float | None = None
    retry: RetrySettings | None = None
    fault: FaultSettings | None = None

    @property
    def where(self) -> str:
        return f'{self.service} route "{self.name}"'

    @classmethod
    def from_mapping(cls, service: str, index: int, value: Any) -> RouteRule:
        """Parse one `[[routes."<service>"]]` table; `index` (from 1) names a rule that has no valid name."""
        where = f"{service} route #{index}"
        if not isinstance(value, Mapping):
            raise _fail(where, "must be a table")
        name = value.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 100 or not name.isprintable():
            raise _fail(where, f"name: {name!r} is not a rule name (1-100 printable characters)")
        where = f'{service} route "{name}"'
        table = _table(where, "rule", value, RULE_KEYS)
        match = Match.from_mapping(where, table.get("match", {}))

        if "subset" in table and "split" in table:
            raise _fail(where, "subset and split cannot be combined")
        split: tuple[WeightedSubset, ...] = (WeightedSubset((), 100),)
        if "subset" in table:
            split = (WeightedSubset(_labels(where, "subset", table["subset"]), 100),)
        elif "split" in table:
            split = _split(where, table["split"])

        request_always = response_always = HeaderOps()
        if "request_headers" in table:
            request_always = HeaderOps.from_mapping(where, "request_headers", table["request_headers"])
        if "response_headers" in table:
            response_always = HeaderOps.from_mapping(where, "response_headers", table["response_headers"])
        leaving_raw = table.get("when_leaving_for", [])
        if isinstance(leaving_raw, Mapping):
            leaving_raw = [leaving_raw]
        if not isinstance(leaving_raw, list | tuple):
            raise _fail(where, "when_leaving_for: must be a table or a list of tables")
        leaving = [
            DestinationEdits.from_mapping(
                where, "when_leaving_for" if len(leaving_raw) == 1 else f"when_leaving_for[{i}]", raw
            )
            for i, raw in enumerate(leaving_raw)
        ]
        request_headers = HeaderEdits(
            request_always, tuple((d.cluster, d.region, d.request) for d in leaving if d.request)
        )
        response_headers = HeaderEdits(
            response_always, tuple((d.cluster, d.region, d.response) for d in leaving if d.response)
        )

        rewrite = None
        if "rewrite_prefix" in table:
            rewrite = _path(where, "rewrite_prefix", table["rewrite_prefix"])
            if match.path is None or match.path.kind == "regex":
                raise _fail(
                    where, "rewrite_prefix: needs match.path_prefix or match.path to know what to replace"
                )
        timeout = _seconds(where, "timeout_s", table["timeout_s"]) if "timeout_s" in table else None
        retry = RetrySettings.from_mapping(where, table["retry"]) if "retry" in table else None
        if (
            retry
            and timeout is not None
            and retry.per_try_timeout_s is not None
            and retry.per_try_timeout_s > timeout
        ):
            raise _fail(
                where,
                f"retry.per_try_timeout_s {retry.per_try_timeout_s:g} is longer than timeout_s {timeout:g}",
            )
        fault = FaultSettings.from_mapping(where, table["fault"]) if "fault" in table else None
        return cls(
            service,
            name,
            match,
            split,
            request_headers or NO_EDITS,
            response_headers or NO_EDITS,
            rewrite,
            timeout,
            retry,
            fault,
        )


def _split(where: str, value: Any) -> tuple[WeightedSubset, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise _fail(where, "split: must be a non-empty list of { subset = {...}, weight = N }")
    arms: list[WeightedSubset] = []
    for i, raw in enumerate(value):
        table = _table(where, f"split[{i}]", raw, ("subset", "weight"))
        if "subset" not in table or "weight" not in table:
            raise _fail(where, f"split[{i}]: needs subset and weight")
        weight = table["weight"]
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
            raise _fail(where, f"split[{i}].weight: {weight!r} is not an integer in 0-100")
        labels = _labels(where, f"split[{i}].subset", table["subset"])
        if any(arm.labels == labels for arm in arms):
            raise _fail(where, f"split[{i}]: subset {format_labels(labels)} is listed twice")
        arms.append(WeightedSubset(labels, weight))
    total = sum(arm.weight for arm in arms)
    if total != 100:
        raise _fail(where, f"weights sum to {total}, not 100")
    return tuple(arms)


# --------------------------------------------------------------------------------------------- services


def _check_service_key(service: Any) -> str:
    if not isinstance(service, str):
        raise ConfigInvalid(f"routes: {service!r} is not a service name")
    try:
        parse_service_key(service)
    except ValidationError as exc:
        raise ConfigInvalid(f"routes.{service!r}: {exc}") from None
    return service


@attrs.frozen
class ServiceRoutes:
    """One service's rules, in order, checked for duplicate names and unreachable rules."""

    service: str
    rules: tuple[RouteRule, ...]

    def __attrs_post_init__(self) -> None:
        _check_service_key(self.service)
        names: set[str] = set()
        for rule in self.rules:
            if rule.service != self.service:
                raise _fail(rule.where, f"belongs to {rule.service}, not {self.service}")
            if rule.name in names:
                raise _fail(rule.where, "another rule of this service has the same name")
            names.add(rule.name)
        _check_reachable(self.rules)

    @classmethod
    def from_list(cls, service: str, value: Any) -> ServiceRoutes:
        _check_service_key(service)
        if isinstance(value, Mapping):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigInvalid(f'routes."{service}": must be an array of tables ([[routes."{service}"]])')
        return cls(service, tuple(RouteRule.from_mapping(service, i + 1, raw) for i, raw in enumerate(value)))


def _check_reachable(rules: tuple[RouteRule, ...]) -> None:
    """Refuse a rule some earlier rule fully shadows; earlier rules are indexed by path kind for speed."""
    no_path: list[RouteRule] = []
    exact: dict[str, list[RouteRule]] = {}
    prefixes: list[RouteRule] = []
    regexes: list[RouteRule] = []
    for rule in rules:
        path = rule.match.path
        candidates: Iterable[RouteRule]
        if path is None:
            candidates = no_path
        elif path.kind == "exact":
            covering = [r for r in prefixes if path.value.startswith(r.match.path.value)]  # type: ignore[union-attr]
            candidates = [*no_path, *exact.get(path.value, ()), *covering, *regexes]
        elif path.kind == "prefix":
            candidates = [*no_path, *(r for r in prefixes if path.value.startswith(r.match.path.value))]  # type: ignore[union-attr]
        else:
            candidates = [*no_path, *regexes]
        for earlier in candidates:
            if earlier.match.covers(rule.match):
                raise _fail(
                    rule.where,
                    f'unreachable: route "{earlier.name}" comes first and matches every request this one matches',
                )
        if path is None:
            no_path.append(rule)
        elif path.kind == "exact":
            exact.setdefault(path.value, []).append(rule)
        elif path.kind == "prefix":
            prefixes.append(rule)
        else:
            regexes.append(rule)


@attrs.frozen
class RoutesConfig:
    """Every service's route rules: the `[routes]` section of a cluster config, or the control plane's."""

    services: Mapping[str, ServiceRoutes] = attrs.field(
        factory=dict, converter=lambda v: MappingProxyType(dict(v))
    )

    @classmethod
    def from_mapping(cls, value: Any) -> RoutesConfig:
        """Parse `{ "checkout.shop": [ {rule}, ... ], ... }` (the `routes` table of the TOML)."""
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise ConfigInvalid("routes: must be a table of service = [[rules]]")
        return cls({service: ServiceRoutes.from_list(service, rules) for service, rules in value.items()})

    def rules_of(self, service: str) -> tuple[RouteRule, ...]:
        routes = self.services.get(service)
        return routes.rules if routes else ()

    def check_catalog(self, catalog: Catalog) -> None:
        """`check_against()` the catalog's services and endpoints."""
        self.check_against(catalog.services, catalog.endpoints.values())

    def check_against(
        self, services: Iterable[str] | Mapping[str, Any], endpoints: Iterable[Endpoint]
    ) -> None:
        """Refuse rules for services the catalog does not know and subsets no endpoint of the service matches."""
        known = set(services)
        labels_by_service: dict[str, list[dict[str, str]]] = {}
        for endpoint in endpoints:
            labels_by_service.setdefault(endpoint.service, []).append(dict(endpoint.labels))
        for service, routes in self.services.items():
            for rule in routes.rules:
                if service not in known:
                    raise _fail(rule.where, "no such service in the catalog")
                candidates = labels_by_service.get(service, [])
                for arm in rule.split:
                    if not arm.labels:
                        continue
                    if not any(all(labels.get(k) == v for k, v in arm.labels) for labels in candidates):
                        raise _fail(
                            rule.where, f"subset {format_labels(arm.labels)} matches no endpoint of {service}"
                        )
