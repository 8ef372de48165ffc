"""Hypothesis strategies for catalog values (shared by the registry's unit tests)."""

from __future__ import annotations

from hypothesis import strategies as st

from registry.model import Catalog, Endpoint, Export, Health, Locality, Peer, Service

labels = st.sampled_from(["a", "b", "echo", "hello", "demo", "shop", "x-1"])
clusters = st.sampled_from(["east-1", "east-2", "west-1"])
localities = st.builds(Locality, st.sampled_from(["us-east", "eu-west"]), st.sampled_from(["z1", "z2"]))
services = st.builds(
    Service,
    labels,
    labels,
    protocol=st.sampled_from(["http", "http2", "grpc", "tcp"]),
    ports=st.lists(st.integers(1, 65535), max_size=2).map(tuple),
)
endpoints = st.builds(
    Endpoint,
    service=st.builds(lambda n, ns: f"{n}.{ns}", labels, labels),
    cluster=clusters,
    address=st.sampled_from(["127.0.0.1", "10.0.0.2", "::1", "db.demo"]),
    port=st.integers(1, 65535),
    locality=localities,
    weight=st.integers(1, 1000),
    labels=st.dictionaries(st.sampled_from(["v", "tier"]), st.sampled_from(["1", "2", "canary"]), max_size=2),
    health=st.sampled_from(list(Health)),
)
exports = st.builds(
    Export,
    service=st.builds(lambda n, ns: f"{n}.{ns}", labels, labels),
    to=st.lists(st.sampled_from(["*", "east-1", "west-1"]), min_size=1, max_size=2),
)
peers = st.builds(
    Peer,
    name=clusters,
    region=st.sampled_from(["us-east", "eu-west"]),
    zones=st.lists(st.sampled_from(["z1", "z2"]), min_size=1, max_size=2).map(tuple),
    gateway=st.sampled_from(["127.0.3.1:15443", "[::1]:15443"]),
)


@st.composite
def catalogs(draw, cluster=clusters):
    return Catalog(
        cluster=draw(cluster),
        revision=draw(st.integers(0, 10_000)),
        services={s.key: s for s in draw(st.lists(services, max_size=4))},
        endpoints={e.id: e for e in draw(st.lists(endpoints, max_size=6))},
        exports={e.service: e for e in draw(st.lists(exports, max_size=3))},
        peers={p.name: p for p in draw(st.lists(peers, max_size=2))},
    )
