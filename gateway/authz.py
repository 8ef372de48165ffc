"""Cross-cluster authorization: may this SPIFFE identity call that service here?

Evaluated per request by the receiving east-west gateway (`gateway.request_policy`), after mutual
TLS has verified the caller's SPIFFE ID; a denial is a 403 with `x-isthmus-reason: <reason>`,
counted in `isthmus_authz_denials_total{reason,source_cluster}`. The control plane uses
`parse_source` for the identities of federation calls. Pure: no I/O, no clock; must not import
trio, `federation` or `certs`.

Rules are Consul-intention style, per service, in the cluster config::

    [authz]
    default = "allow"          # for linked clusters on exported services; "deny" makes every rule an allow-list

    [[authz.rules]]
    service = "checkout.shop"  # or "*" for every service
    source = "spiffe://mesh.example/cluster/east-*/*"
    action = "allow"           # allow | deny
    name = "east may check out" # optional, shown in the reason

A `*` in `source` matches any characters within one path segment, `**` matches across
segments. The decision, in this order (the first step that decides wins):

1. the caller's trust domain is not ours: deny `foreign-trust-domain`;
2. the caller's cluster is neither this cluster nor a linked peer: deny `not-linked`
   (default deny for unlinked clusters, whatever the rules say);
3. a peer calling a service not exported to it: deny `not-exported`;
4. the most specific matching rule decides (`allowed-by-rule` / `denied-by-rule`). Specificity:
   a rule naming the service beats a `*` service rule; then an exact source (no wildcard) beats
   a pattern; then the pattern with more literal path segments; then with more literal
   characters; at a full tie, deny beats allow (Consul's precedence, in the same spirit);
5. no rule matches: the `default` action (`default-allow` / `default-deny`).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import attrs

ACTIONS = ("allow", "deny")
_SPIFFE = re.compile(r"^spiffe://([a-z0-9._-]+)(/[^?#]*)?$")


class AuthzConfigError(ValueError):
    """An `[authz]` section that cannot be used; the message names the rule and field."""


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("^" + "".join(out) + "$")


@attrs.frozen
class Rule:
    service: str
    source: str
    action: str
    name: str = ""
    _regex: re.Pattern[str] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_regex", _glob_to_regex(self.source))

    @property
    def label(self) -> str:
        return self.name or f"{self.action} {self.source} -> {self.service}"

    def matches(self, service: str, source: str) -> bool:
        return (self.service == "*" or self.service == service) and bool(self._regex.match(source))

    def specificity(self) -> tuple[int, int, int, int, int]:
        """Bigger is more specific; the last element makes deny win a tie."""
        exact_service = int(self.service != "*")
        exact_source = int("*" not in self.source)
        literal_segments = sum(1 for seg in self.source.split("/") if seg and "*" not in seg)
        literal_chars = len(self.source.replace("*", ""))
        return (exact_service, exact_source, literal_segments, literal_chars, int(self.action == "deny"))


@attrs.frozen
class AuthzPolicy:
    rules: tuple[Rule, ...] = ()
    default: str = "allow"

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None, *, source: str = "[authz]") -> AuthzPolicy:
        raw = raw or {}
        if not isinstance(raw, Mapping):
            raise AuthzConfigError(f"{source}: must be a table")
        default = raw.get("default", "allow")
        if default not in ACTIONS:
            raise AuthzConfigError(f"{source}.default: {default!r} is not allow or deny")
        rules = []
        items = raw.get("rules", [])
        if not isinstance(items, list):
            raise AuthzConfigError(f"{source}.rules: must be an array of tables")
        for index, item in enumerate(items):
            where = f"{source}.rules[{index}]"
            if not isinstance(item, Mapping):
                raise AuthzConfigError(f"{where}: must be a table")
            unknown = set(item) - {"service", "source", "action", "name"}
            if unknown:
                raise AuthzConfigError(f"{where}: unknown field {sorted(unknown)[0]!r}")
            service = item.get("service", "*")
            if not isinstance(service, str) or not (service == "*" or re.match(r"^[a-z0-9-]+\.[a-z0-9-]+$", service)):
                raise AuthzConfigError(f"{where}.service: {service!r} is not name.namespace or '*'")
            src = item.get("source")
            if not isinstance(src, str) or not src.startswith("spiffe://"):
                raise AuthzConfigError(f"{where}.source: {src!r} is not a SPIFFE ID pattern (spiffe://...)")
            action = item.get("action")
            if action not in ACTIONS:
                raise AuthzConfigError(f"{where}.action: {action!r} is not allow or deny")
            name = item.get("name", "")
            if not isinstance(name, str):
                raise AuthzConfigError(f"{where}.name: must be a string")
            rules.append(Rule(service=service, source=src, action=action, name=name))
        return cls(rules=tuple(rules), default=default)


@attrs.frozen
class Decision:
    allowed: bool
    reason: str  # a slug for metrics and `x-isthmus-reason`
    detail: str  # one line for logs and the 403 body
    rule: Rule | None = None


def parse_source(identity: str) -> tuple[str, str | None]:
    """(trust domain, cluster or None) of a SPIFFE ID; raises ValueError when it is not one."""
    match = _SPIFFE.match(identity or "")
    if not match:
        raise ValueError(f"{identity!r} is not a SPIFFE ID")
    segments = [s for s in (match.group(2) or "").split("/") if s]
    cluster = segments[1] if len(segments) >= 2 and segments[0] == "cluster" else None
    return match.group(1), cluster


def exported_to(exports: Mapping[str, Any], service: str, cluster: str) -> bool:
    """Whether `exports[service]` (anything with `.allows(peer)` or `.to`) lets `cluster` in."""
    export = exports.get(service)
    if export is None:
        return False
    allows = getattr(export, "allows", None)
    if allows is not None:
        return bool(allows(cluster))
    to = export.get("to", ()) if isinstance(export, Mapping) else ()
    return "*" in to or cluster in to


def decide(
    policy: AuthzPolicy,
    *,
    service: str,
    source: str,
    trust_domain: str,
    local_cluster: str,
    linked: Collection[str],
    exports: Mapping[str, Any],
) -> Decision:
    """The decision for `source` calling `service` on this cluster (see the module docstring)."""
    try:
        domain, cluster = parse_source(source)
    except ValueError as exc:
        return Decision(False, "bad-identity", str(exc))
    if domain != trust_domain:
        return Decision(False, "foreign-trust-domain", f"{source}: trust domain {domain} is not {trust_domain}")
    if cluster is None or (cluster != local_cluster and cluster not in linked):
        return Decision(False, "not-linked", f"{source}: cluster {cluster or '?'} is not linked with {local_cluster}")
    if cluster != local_cluster and not exported_to(exports, service, cluster):
        return Decision(False, "not-exported", f"{service} is not exported to {cluster}")
    rule = best_rule(policy.rules, service=service, source=source)
    if rule is not None:
        allowed = rule.action == "allow"
        reason = "allowed-by-rule" if allowed else "denied-by-rule"
        return Decision(allowed, reason, f"{source} -> {service}: {rule.label}", rule)
    allowed = policy.default == "allow"
    return Decision(allowed, f"default-{policy.default}", f"{source} -> {service}: no rule matches", None)


def best_rule(rules: Iterable[Rule], *, service: str, source: str) -> Rule | None:
    matching = [r for r in rules if r.matches(service, source)]
    return max(matching, key=Rule.specificity, default=None)
