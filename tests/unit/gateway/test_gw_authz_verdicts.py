"""`RequestPolicy.authorize`: the east-west gateway's authorization decisions are kept per catalog
snapshot and `[authz]` policy. The answers are always `gateway.authz.decide`'s; a replaced catalog
(a peer unlinked, an export withdrawn) or policy is decided afresh, never from what was kept."""

from __future__ import annotations

import attrs
from prometheus_client import CollectorRegistry

from gateway import request_policy
from gateway.authz import AuthzPolicy, decide
from gateway.request_policy import RequestPolicy
from registry.model import Catalog, Export, Peer, Service

EAST = "spiffe://mesh.example/cluster/east-1/gateway"
SOUTH = "spiffe://mesh.example/cluster/south-1/gateway"
FOREIGN = "spiffe://other.example/cluster/east-1/gateway"


def catalog(revision: int = 1, *, peers=("east-1", "south-1"), exported=("*",)) -> Catalog:
    services = {"checkout.shop": Service("checkout", "shop"), "ledger.shop": Service("ledger", "shop")}
    linked = {name: Peer(name, "us-east", ("us-east-1a",), "127.0.0.1:9443") for name in peers}
    return Catalog("west-1", revision, services, {}, {"checkout.shop": Export("checkout.shop", list(exported))},
                   peers=linked)


def policy(authz: AuthzPolicy) -> RequestPolicy:
    return RequestPolicy(cluster="west-1", trust_domain="mesh.example", authz=authz, registry=CollectorRegistry())


def reference(authz: AuthzPolicy, service: str, source: str, snapshot: Catalog):
    return decide(authz, service=service, source=source, trust_domain="mesh.example", local_cluster="west-1",
                  linked=snapshot.peers, exports=snapshot.exports)


DENY_SOUTH = AuthzPolicy.from_mapping({"rules": [{"service": "checkout.shop", "source": SOUTH, "action": "deny"}]})


def test_kept_decisions_are_the_same_as_deciding_each_time():
    gateway = policy(DENY_SOUTH)
    snapshot = catalog()
    for _ in range(3):
        for service in ("checkout.shop", "ledger.shop"):
            for source in (EAST, SOUTH, FOREIGN, "not a spiffe id", ""):
                assert gateway.authorize(service, source, snapshot) == reference(DENY_SOUTH, service, source, snapshot)
    assert gateway.authorize("checkout.shop", EAST, snapshot).allowed
    assert gateway.authorize("checkout.shop", SOUTH, snapshot).reason == "denied-by-rule"
    assert gateway.authorize("ledger.shop", EAST, snapshot).reason == "not-exported"


def test_a_new_catalog_or_policy_is_decided_afresh():
    gateway = policy(DENY_SOUTH)
    assert gateway.authorize("checkout.shop", EAST, catalog(1)).allowed
    # east-1 unlinked in the next revision: refused at once.
    assert gateway.authorize("checkout.shop", EAST, catalog(2, peers=("south-1",))).reason == "not-linked"
    # The export withdrawn from everyone but south-1.
    assert gateway.authorize("checkout.shop", EAST, catalog(3, exported=("south-1",))).reason == "not-exported"
    # An equal snapshot that is a new object is still a new snapshot (catalogs are replaced, not edited).
    relinked = catalog(4)
    assert gateway.authorize("checkout.shop", EAST, relinked).allowed
    # A reloaded `[authz]` policy that now denies east-1.
    gateway.authz = AuthzPolicy.from_mapping({"default": "deny"})
    assert gateway.authorize("checkout.shop", EAST, relinked).reason == "default-deny"
    assert gateway.authorize("checkout.shop", EAST, attrs.evolve(relinked, revision=5)).reason == "default-deny"


def test_what_is_kept_stays_bounded(monkeypatch):
    monkeypatch.setattr(request_policy, "MAX_KEPT_VERDICTS", 8)
    gateway = policy(DENY_SOUTH)
    snapshot = catalog()
    for n in range(50):
        source = f"spiffe://mesh.example/cluster/east-1/workload-{n}"
        assert gateway.authorize("checkout.shop", source, snapshot).allowed
        assert len(gateway._verdicts) <= 8
