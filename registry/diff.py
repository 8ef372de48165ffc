"""Pure catalog arithmetic: diff, apply, merge with imported catalogs, and the exported view.

Owns `CatalogDelta` (what changed between two catalogs), `diff(a, b)`, `apply(a, delta)`
(`apply(a, diff(a, b)) == b` for every pair, a Hypothesis property in the tests),
`merge(local, *imported)` and `export_view(catalog, peer)`. No I/O, no clock, no trio:
imports only `registry.model`.

Merge rules (DESIGN, "peer control planes import each other's exported services"):
- the local catalog wins: a local service definition is kept over an imported one, and
  local exports, peers, policies and route rules are the only ones in the result (they are
  this cluster's words);
- from an imported catalog only services exported to the local cluster are taken, and only
  endpoints whose cluster is the imported catalog's own: imported endpoints keep their
  origin cluster, and a peer cannot speak for a third cluster (gateways never re-forward);
- the result carries the local revision (imported catalogs count revisions of their own).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from registry.model import Catalog

_PARTS = ("services", "endpoints", "exports", "peers", "policies", "routes")


def _frozen(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(value or {}))


def _keys(value: Any) -> frozenset[str]:
    return frozenset(value or ())


@attrs.frozen
class CatalogDelta:
    """From catalog revision `from_revision` to `to_revision`: what was put (added or changed) and removed."""

    cluster: str
    from_revision: int
    to_revision: int
    services_put: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen)
    services_removed: frozenset[str] = attrs.field(factory=frozenset, converter=_keys)
    endpoints_put: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen)
    endpoints_removed: frozenset[str] = attrs.field(factory=frozenset, converter=_keys)
    exports_put: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen)
    exports_removed: frozenset[str] = attrs.field(factory=frozenset, converter=_keys)
    peers_put: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen)
    peers_removed: frozenset[str] = attrs.field(factory=frozenset, converter=_keys)
    policies_put: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen)
    policies_removed: frozenset[str] = attrs.field(factory=frozenset, converter=_keys)
    routes_put: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen)
    routes_removed: frozenset[str] = attrs.field(factory=frozenset, converter=_keys)

    @property
    def empty(self) -> bool:
        return not any(getattr(self, f"{p}_put") or getattr(self, f"{p}_removed") for p in _PARTS)

    def summary(self) -> str:
        """One line for logs: `+2 ~1 -0 endpoints, ...`."""
        parts = []
        for p in _PARTS:
            put, removed = getattr(self, f"{p}_put"), getattr(self, f"{p}_removed")
            if put or removed:
                parts.append(f"{p}: {len(put)} put, {len(removed)} removed")
        return f"{self.cluster} r{self.from_revision}->r{self.to_revision}: " + ("; ".join(parts) or "no change")


def _diff_part(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[dict[str, Any], frozenset[str]]:
    if a is b:
        return {}, frozenset()
    put = {k: v for k, v in b.items() if k not in a or a[k] != v}
    removed = frozenset(k for k in a if k not in b)
    return put, removed


def diff(a: Catalog, b: Catalog) -> CatalogDelta:
    """What turns `a` into `b`."""
    kwargs: dict[str, Any] = {}
    for p in _PARTS:
        put, removed = _diff_part(getattr(a, p), getattr(b, p))
        kwargs[f"{p}_put"] = put
        kwargs[f"{p}_removed"] = removed
    return CatalogDelta(cluster=b.cluster, from_revision=a.revision, to_revision=b.revision, **kwargs)


def _apply_part(a: Mapping[str, Any], put: Mapping[str, Any], removed: frozenset[str]) -> Mapping[str, Any]:
    if not put and not removed:
        return a
    out = dict(a)
    for k in removed:
        out.pop(k, None)
    out.update(put)
    return MappingProxyType(out)


def apply(a: Catalog, delta: CatalogDelta) -> Catalog:
    """`a` with `delta` applied: a new catalog at `delta.to_revision` (untouched parts are shared)."""
    parts = {p: _apply_part(getattr(a, p), getattr(delta, f"{p}_put"), getattr(delta, f"{p}_removed")) for p in _PARTS}
    return Catalog(cluster=delta.cluster, revision=delta.to_revision, **parts)


def export_view(catalog: Catalog, peer: str) -> Catalog:
    """What `catalog`'s cluster shows `peer`: services exported to it, with their local endpoints only."""
    exported = {k: e for k, e in catalog.exports.items() if e.allows(peer) and k in catalog.services}
    return Catalog(
        cluster=catalog.cluster,
        revision=catalog.revision,
        services={k: catalog.services[k] for k in exported},
        endpoints={
            i: e for i, e in catalog.endpoints.items() if e.service in exported and e.cluster == catalog.cluster
        },
        exports=exported,
        peers={},
    )  # policies and route rules are the exporting cluster's own: never shown to a peer


def merge(local: Catalog, *imported: Catalog) -> Catalog:
    """The local catalog plus what each imported catalog exports to it (see the module docstring)."""
    services = dict(local.services)
    endpoints = dict(local.endpoints)
    for remote in imported:
        if remote.cluster == local.cluster:
            continue
        view = export_view(remote, local.cluster)
        for key, service in view.services.items():
            services.setdefault(key, service)
        for ident, endpoint in view.endpoints.items():
            endpoints.setdefault(ident, endpoint)
    return Catalog(
        cluster=local.cluster,
        revision=local.revision,
        services=services,
        endpoints=endpoints,
        exports=local.exports,
        peers=local.peers,
        policies=local.policies,
        routes=local.routes,
    )
