"""Authorization across clusters: default deny for unlinked clusters, most specific rule wins."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from gateway import authz
from gateway.authz import AuthzConfigError, AuthzPolicy, decide
from registry.model import Export

TD = "mesh.example"
EXPORTS = {
    "checkout.shop": Export("checkout.shop", ("*",)),
    "hello.demo": Export("hello.demo", ("east-1",)),
}


def check(policy, source, service="checkout.shop", linked=("east-1", "east-2")):
    return decide(
        policy, service=service, source=source, trust_domain=TD, local_cluster="west-1", linked=linked, exports=EXPORTS
    )


def policy(*rules, default="allow"):
    return AuthzPolicy.from_mapping({"default": default, "rules": list(rules)})


def test_unlinked_clusters_are_denied_whatever_the_rules_say():
    p = policy({"source": "spiffe://mesh.example/**", "action": "allow"})
    d = check(p, "spiffe://mesh.example/cluster/east-9/gateway")
    assert (d.allowed, d.reason) == (False, "not-linked")
    assert d.detail == "spiffe://mesh.example/cluster/east-9/gateway: cluster east-9 is not linked with west-1"


def test_another_trust_domain_is_denied():
    d = check(policy(), "spiffe://evil.example/cluster/east-1/gateway")
    assert (d.allowed, d.reason) == (False, "foreign-trust-domain")


def test_not_a_spiffe_id_is_denied():
    assert check(policy(), "https://mesh.example/x").reason == "bad-identity"


def test_a_service_not_exported_to_the_caller_is_denied():
    d = check(policy(), "spiffe://mesh.example/cluster/east-2/gateway", service="hello.demo")
    assert (d.allowed, d.reason) == (False, "not-exported")
    assert check(policy(), "spiffe://mesh.example/cluster/east-1/gateway", service="hello.demo").allowed


def test_linked_and_exported_is_allowed_by_default_and_denied_with_default_deny():
    assert check(policy(), "spiffe://mesh.example/cluster/east-1/gateway").reason == "default-allow"
    d = check(policy(default="deny"), "spiffe://mesh.example/cluster/east-1/gateway")
    assert (d.allowed, d.reason) == (False, "default-deny")


def test_an_allow_list_with_default_deny():
    p = policy({"service": "checkout.shop", "source": "spiffe://mesh.example/cluster/east-*/*", "action": "allow"},
               default="deny")  # fmt: skip
    assert check(p, "spiffe://mesh.example/cluster/east-1/gateway").reason == "allowed-by-rule"
    # `*` stays within one segment: a deeper path does not match.
    assert check(p, "spiffe://mesh.example/cluster/east-1/ns/shop/sa/web").reason == "default-deny"


def test_an_exact_source_beats_a_pattern():
    p = policy(
        {"source": "spiffe://mesh.example/cluster/east-*/*", "action": "allow"},
        {"source": "spiffe://mesh.example/cluster/east-2/gateway", "action": "deny", "name": "east-2 is frozen"},
    )
    d = check(p, "spiffe://mesh.example/cluster/east-2/gateway")
    assert (d.allowed, d.reason, d.rule.name) == (False, "denied-by-rule", "east-2 is frozen")
    assert "east-2 is frozen" in d.detail
    assert check(p, "spiffe://mesh.example/cluster/east-1/gateway").allowed


def test_a_rule_naming_the_service_beats_a_wildcard_service_rule():
    p = policy(
        {"service": "*", "source": "spiffe://mesh.example/cluster/east-1/gateway", "action": "deny"},
        {"service": "checkout.shop", "source": "spiffe://mesh.example/**", "action": "allow"},
    )
    assert check(p, "spiffe://mesh.example/cluster/east-1/gateway").reason == "allowed-by-rule"


def test_more_literal_segments_beat_fewer():
    p = policy(
        {"source": "spiffe://mesh.example/**", "action": "deny"},
        {"source": "spiffe://mesh.example/cluster/east-1/*", "action": "allow"},
    )
    assert check(p, "spiffe://mesh.example/cluster/east-1/gateway").allowed
    assert not check(p, "spiffe://mesh.example/cluster/east-2/gateway").allowed


def test_deny_wins_a_tie():
    p = policy(
        {"source": "spiffe://mesh.example/cluster/east-1/*", "action": "allow"},
        {"source": "spiffe://mesh.example/cluster/east-1/*", "action": "deny"},
    )
    assert check(p, "spiffe://mesh.example/cluster/east-1/gateway").reason == "denied-by-rule"


def test_callers_in_this_cluster_need_no_export():
    d = check(policy(), "spiffe://mesh.example/cluster/west-1/gateway", service="hello.demo")
    assert d.allowed


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"default": "maybe"}, "[authz].default: 'maybe' is not allow or deny"),
        ({"rules": [{"source": "spiffe://x/*", "action": "permit"}]}, "[authz].rules[0].action: 'permit' is not allow or deny"),
        ({"rules": [{"source": "east-*", "action": "allow"}]}, "[authz].rules[0].source: 'east-*' is not a SPIFFE ID pattern (spiffe://...)"),
        ({"rules": [{"service": "checkout", "source": "spiffe://x/*", "action": "allow"}]}, "[authz].rules[0].service: 'checkout' is not name.namespace or '*'"),
        ({"rules": [{"source": "spiffe://x/*", "action": "allow", "when": 1}]}, "[authz].rules[0]: unknown field 'when'"),
        ({"rules": {}}, "[authz].rules: must be an array of tables"),
    ],
)
def test_bad_rules_name_the_rule_and_field(raw, message):
    with pytest.raises(AuthzConfigError) as info:
        AuthzPolicy.from_mapping(raw)
    assert str(info.value) == message


def test_authz_imports_nothing_the_gateway_may_not_import():
    tree = ast.parse(Path(authz.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    assert not {m for m in imported if m and m.split(".")[0] in {"federation", "trio", "certs", "gateway"}}
