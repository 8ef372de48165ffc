"""Policies and route rules in the catalog: codec, diff, store keys, the gateways' stream, and the
write-time validation every writer (CLI, control plane) shares."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from federation.catalog_stream import CatalogHub
from gateway.control_source import StreamState
from gateway.errors import ConfigInvalid
from gateway.request_policy import traffic_options, validate_policy, validate_routes
from registry import codec
from registry.diff import apply, diff, export_view, merge
from registry.model import Catalog, Cluster, Endpoint, Export, Locality, Policy, RouteRules, Service
from registry.store import Store, parse_key
from registry.testing import open_fake_backend

EAST = Locality("us-east", "us-east-1a")
RULES = [{"name": "canary", "split": [{"subset": {"version": "v1"}, "weight": 90},
                                      {"subset": {"version": "v2"}, "weight": 10}]}]


def catalog(**kwargs) -> Catalog:
    services = {"checkout.shop": Service("checkout", "shop")}
    endpoints = [Endpoint("checkout.shop", "east-1", "127.0.0.1", 9000 + i, EAST, labels={"version": v})
                 for i, v in enumerate(("v1", "v2"))]
    return Catalog("east-1", 3, services, {e.id: e for e in endpoints},
                   {"checkout.shop": Export("checkout.shop", ["*"])}, **kwargs)


def test_policies_and_routes_round_trip_and_old_documents_still_decode():
    full = catalog(policies={"checkout.shop": Policy("checkout.shop", {"failover": ["eu-west"]})},
                   routes={"checkout.shop": RouteRules("checkout.shop", RULES)})
    document = codec.catalog_to_json(full)
    assert document["policies"] == [{"service": "checkout.shop", "spec": {"failover": ["eu-west"]}}]
    assert codec.catalog_from_json(codec.loads(codec.dumps(document))) == full
    plain = codec.catalog_to_json(catalog())
    assert "policies" not in plain and "routes" not in plain  # old readers see the same document
    assert codec.catalog_from_json(plain).policies == {}


def test_a_malformed_policy_document_names_its_field():
    document = codec.catalog_to_json(catalog())
    document["routes"] = [{"service": "checkout.shop", "rules": {"name": "x"}}]
    with pytest.raises(Exception, match=r"catalog.routes\[0\].rules: expected a list"):
        codec.catalog_from_json(document)


def test_diff_apply_carry_policies_and_peers_never_see_them():
    a = catalog()
    b = attrs.evolve(a, revision=4, policies={"checkout.shop": Policy("checkout.shop", {"failover": ["eu-west"]})},
                     routes={"checkout.shop": RouteRules("checkout.shop", RULES)})
    delta = diff(a, b)
    assert set(delta.policies_put) == {"checkout.shop"} and set(delta.routes_put) == {"checkout.shop"}
    assert apply(a, delta) == b
    assert apply(b, diff(b, a)) == a
    assert export_view(b, "west-1").policies == {} and export_view(b, "west-1").routes == {}
    assert merge(b, Catalog("west-1", 1)).routes == b.routes


async def test_store_keeps_policies_and_routes_under_their_keys():
    assert parse_key("/isthmus/east-1/policies/checkout.shop") == ("east-1", "policies", "checkout.shop")
    assert parse_key("/isthmus/east-1/routes/checkout.shop") == ("east-1", "routes", "checkout.shop")
    async with open_fake_backend() as backend:
        store = Store(backend)
        await store.add_cluster(Cluster("east-1", "us-east", ("us-east-1a",)))
        await store.set_policy("east-1", Policy("checkout.shop", {"failover": ["eu-west"]}))
        await store.set_routes("east-1", RouteRules("checkout.shop", RULES))
        loaded = await store.load_catalog("east-1")
        assert loaded.policies["checkout.shop"].spec == {"failover": ["eu-west"]}
        assert loaded.routes["checkout.shop"].rules[0]["name"] == "canary"
        await store.remove_routes("east-1", "checkout.shop")
        assert (await store.load_catalog("east-1")).routes == {}


async def test_a_policy_change_reaches_a_watching_gateway():
    hub = CatalogHub("east-1")
    hub.publish(catalog())
    state = StreamState()
    stream = hub.watch_gateway(None, None, heartbeat_s=60)
    state.feed(await stream.__anext__())
    hub.publish(attrs.evolve(catalog(), routes={"checkout.shop": RouteRules("checkout.shop", RULES)}))
    updated = state.feed(await stream.__anext__())
    assert updated.routes["checkout.shop"].rules[0]["name"] == "canary"
    hub.publish(catalog())
    assert state.feed(await stream.__anext__()).routes == {}
    await stream.aclose()


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([{"name": "re", "match": {"path_regex": "/a(["}}], 'checkout.shop route "re": match.path_regex: invalid regular expression'),
        ([{"name": "canary", "split": [{"subset": {"version": "v1"}, "weight": 90},
                                       {"subset": {"version": "v2"}, "weight": 5}]}],
         'checkout.shop route "canary": weights sum to 95, not 100'),
        ([{"name": "v3", "subset": {"version": "v3"}}],
         'checkout.shop route "v3": subset version=v3 matches no endpoint of checkout.shop'),
        ([{"name": "hdr", "request_headers": {"add": {"bad header": "x"}}}],
         'checkout.shop route "hdr": request_headers.add: header name \'bad header\' is not an RFC 9110 token'),
    ],
)
def test_bad_route_rules_are_refused_naming_the_rule(rules, message):
    with pytest.raises(ConfigInvalid) as info:
        validate_routes("checkout.shop", rules, catalog())
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_rules_for_an_unknown_service_are_refused():
    with pytest.raises(ConfigInvalid, match='payments.shop route "canary": no such service in the catalog'):
        validate_routes("payments.shop", RULES, catalog())


def test_a_bad_policy_is_refused_with_its_field():
    with pytest.raises(ConfigInvalid, match=r'policy "checkout.shop": outlier.consecutive_5xx: -1'):
        validate_policy("checkout.shop", {"outlier": {"consecutive_5xx": -1}})
    assert validate_policy("checkout.shop", {"failover": ["eu-west"]}).spec == {"failover": ["eu-west"]}


def test_access_logs_are_off_by_default_and_relative_paths_live_in_the_data_dir(tmp_path: Path):
    authz, access = traffic_options({}, tmp_path)
    assert access is None and authz.default == "allow"
    _, access = traffic_options({"access_log": {"sample_rate": 0.5}}, tmp_path)
    assert access.path == str(tmp_path / "access.log") and access.sample_rate == 0.5
    _, access = traffic_options({"access_log": {"path": "-"}}, tmp_path)
    assert access.path == "-"
    _, access = traffic_options({"access_log": {"enabled": False}}, tmp_path)
    assert access is None
    with pytest.raises(ConfigInvalid, match=r"\[authz\].rules\[0\].action: 'permit' is not allow or deny"):
        traffic_options({"authz": {"rules": [{"source": "spiffe://x/*", "action": "permit"}]}}, tmp_path)


def test_catalog_policies_reach_the_balancers_over_the_config_defaults(caplog):
    from prometheus_client import CollectorRegistry

    from gateway.lb.balancer import BalancerSet
    from gateway.lb.policy import ServicePolicy
    from gateway.request_policy import RequestPolicy

    defaults = ServicePolicy.from_policies({"checkout.shop": {"failover": ["us-west"]},
                                            "cart.shop": {"failover": ["eu-west"]}})
    policy = RequestPolicy(cluster="east-1", trust_domain="mesh.example", registry=CollectorRegistry(),
                           picker_factory=BalancerSet(defaults))
    with_policy = catalog(policies={"checkout.shop": Policy("checkout.shop", {"failover": ["ap-south"]})})
    merged = policy.balancer_policies(with_policy)
    assert merged["checkout.shop"].failover.regions == ("ap-south",)  # the catalog's wins
    assert merged["cart.shop"].failover.regions == ("eu-west",)  # the config's default stays
    assert policy.balancer_policies(with_policy) is None  # unchanged: nothing to rebuild
    bad = catalog(policies={"checkout.shop": Policy("checkout.shop", {"outlier": {"consecutive_5xx": -1}})})
    assert policy.balancer_policies(bad) is None
    assert "policies refused, keeping the previous ones" in caplog.text
