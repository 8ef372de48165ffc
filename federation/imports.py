"""What one cluster exports to a peer, and what it accepts from a peer.

Exporter side: `export_view(catalog, peer)` is the part of a cluster's own catalog a peer may
see: the services exported to it (`Export.allows(peer)`), their endpoints in this cluster only
(imports are never re-exported), and the exports themselves narrowed to that peer (a peer does
not learn who else is linked). `view_delta(old, new)` is what changed between two views.

Importer side: a peer may lie or be wrong. `accept_snapshot` and `accept_delta` keep only what
the peer may tell us: services it exported to us, endpoints whose cluster is that peer and whose
locality is one of the peer's, endpoint identity labels under the peer's SPIFFE ID, all of it
delivered over a connection that authenticated as that peer. Anything else is a `Refusal` with a
reason slug (counted and logged by the caller); the refused item is dropped, the rest of the
message applies, and nothing the peer says can touch this cluster's own catalog.

`merge(local, views)` builds the catalog gateways see: the same service in several clusters is
one service whose endpoints span localities, each endpoint keeping its origin cluster and
locality. `check_consistency` is the proof used after a resync: no endpoint missing, none extra,
none duplicated.

Pure: no trio, no I/O. Wire encoding of values is `registry.codec`'s.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from registry import codec
from registry.errors import ValidationError
from registry.model import Catalog, Endpoint, Export, Locality, Peer, Service

IDENTITY_LABEL = "isthmus.io/identity"


@attrs.frozen
class ExportView:
    """One cluster's exported catalog as seen by one peer, at the exporter's revision."""

    origin: str
    revision: int = 0
    services: Mapping[str, Service] = attrs.field(factory=dict)
    endpoints: Mapping[str, Endpoint] = attrs.field(factory=dict)
    exports: Mapping[str, Export] = attrs.field(factory=dict)


@attrs.frozen
class Refusal:
    """Something a peer sent that was not accepted. `reason` is a slug for metrics."""

    peer: str
    reason: str
    item: str
    detail: str

    def __str__(self) -> str:
        return f"peer {self.peer}: refused {self.item}: {self.reason}: {self.detail}"


@attrs.frozen
class PeerContext:
    """What the importing side knows of a peer independently of what it sends."""

    peer: str
    local: str
    trust_domain: str
    localities: frozenset[Locality] = attrs.field(converter=frozenset)

    @classmethod
    def of(cls, peer: Peer, *, local: str, trust_domain: str) -> PeerContext:
        return cls(
            peer=peer.name,
            local=local,
            trust_domain=trust_domain,
            localities=frozenset(Locality(peer.region, z) for z in peer.zones),
        )

    @property
    def spiffe_prefix(self) -> str:
        return f"spiffe://{self.trust_domain}/cluster/{self.peer}"


class MessageRefused(ValueError):
    """A whole message refused (wrong sender, wrong origin, not decodable); `.refusal` says why."""

    def __init__(self, refusal: Refusal) -> None:
        self.refusal = refusal
        super().__init__(str(refusal))


# --- exporter side --------------------------------------------------------------------------------


def export_view(catalog: Catalog, peer: str) -> ExportView:
    exports = {k: Export(k, (peer,)) for k, e in catalog.exports.items() if e.allows(peer)}
    services = {k: s for k, s in catalog.services.items() if k in exports}
    endpoints = {
        i: e for i, e in catalog.endpoints.items() if e.service in exports and e.cluster == catalog.cluster
    }
    return ExportView(catalog.cluster, catalog.revision, services, endpoints, exports)


def view_to_json(view: ExportView) -> dict[str, Any]:
    return {
        "type": "snapshot",
        "cluster": view.origin,
        "revision": view.revision,
        "services": [codec.service_to_dict(view.services[k]) for k in sorted(view.services)],
        "endpoints": [codec.endpoint_to_dict(view.endpoints[k]) for k in sorted(view.endpoints)],
        "exports": [codec.export_to_dict(view.exports[k]) for k in sorted(view.exports)],
    }


_MISSING = object()


def _changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    # Identity first: views share their values with the catalog they come from.
    upserts = [k for k, v in new.items() if (o := old.get(k, _MISSING)) is not v and o != v]
    removes = [k for k in old if k not in new]
    return sorted(upserts), sorted(removes)


def view_delta(old: ExportView, new: ExportView) -> dict[str, Any] | None:
    """The delta message from `old` to `new`, or None when nothing a peer sees changed."""
    s_up, s_rm = _changes(old.services, new.services)
    e_up, e_rm = _changes(old.endpoints, new.endpoints)
    x_up, x_rm = _changes(old.exports, new.exports)
    if not (s_up or s_rm or e_up or e_rm or x_up or x_rm):
        return None
    return {
        "type": "delta",
        "cluster": new.origin,
        "revision": new.revision,
        "upsert": {
            "services": [codec.service_to_dict(new.services[k]) for k in s_up],
            "endpoints": [codec.endpoint_to_dict(new.endpoints[k]) for k in e_up],
            "exports": [codec.export_to_dict(new.exports[k]) for k in x_up],
        },
        "remove": {"services": s_rm, "endpoints": e_rm, "exports": x_rm},
    }


# --- importer side --------------------------------------------------------------------------------


def check_sender(ctx: PeerContext, identity: str | None) -> None:
    """The connection that delivered a message must have authenticated as the peer's cluster."""
    if identity is None or not (identity == ctx.spiffe_prefix or identity.startswith(ctx.spiffe_prefix + "/")):
        raise MessageRefused(
            Refusal(ctx.peer, "identity-mismatch", "message", f"sent by {identity or 'an unverified identity'}, "
                    f"expected an identity under {ctx.spiffe_prefix}")  # fmt: skip
        )


def _header(ctx: PeerContext, data: object, kind: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise MessageRefused(Refusal(ctx.peer, "malformed", kind, "not a JSON object"))
    if data.get("cluster") != ctx.peer:
        raise MessageRefused(
            Refusal(ctx.peer, "wrong-origin", kind, f"claims to come from cluster {data.get('cluster')!r}")
        )
    revision = data.get("revision")
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 0:
        raise MessageRefused(Refusal(ctx.peer, "malformed", kind, f"revision {revision!r} is not a revision"))
    return data


def _items(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key, [])
    return list(value) if isinstance(value, list) else []


class _Builder:
    """Applies items to a mutable copy of a view, collecting refusals."""

    def __init__(self, ctx: PeerContext, view: ExportView) -> None:
        self.ctx = ctx
        self.services = dict(view.services)
        self.endpoints = dict(view.endpoints)
        self.exports = dict(view.exports)
        self.refusals: list[Refusal] = []
        self.put_ids: set[str] = set()  # endpoint ids put by this message

    def refuse(self, reason: str, item: str, detail: str) -> None:
        self.refusals.append(Refusal(self.ctx.peer, reason, item, detail))

    def put_export(self, raw: object, where: str) -> None:
        try:
            export = codec.export_from_dict(raw, where)
        except ValidationError as exc:
            self.refuse("malformed", where, str(exc))
            return
        if not export.allows(self.ctx.local):
            self.refuse("not-exported", f"export {export.service}", f"exported to {', '.join(export.to)}, not to {self.ctx.local}")
            self.drop_export(export.service)
            return
        self.exports[export.service] = export

    def drop_export(self, key: str) -> None:
        self.exports.pop(key, None)
        self.services.pop(key, None)
        for i in [i for i, e in self.endpoints.items() if e.service == key]:
            del self.endpoints[i]

    def put_service(self, raw: object, where: str) -> None:
        try:
            service = codec.service_from_dict(raw, where)
        except ValidationError as exc:
            self.refuse("malformed", where, str(exc))
            return
        if service.key not in self.exports:
            self.refuse("not-exported", f"service {service.key}", f"{self.ctx.peer} did not export it to {self.ctx.local}")
            return
        self.services[service.key] = service

    def put_endpoint(self, raw: object, where: str) -> None:
        try:
            endpoint = codec.endpoint_from_dict(raw, where)
        except ValidationError as exc:
            self.refuse("malformed", where, str(exc))
            return
        item = f"endpoint {endpoint.id}"
        if endpoint.cluster != self.ctx.peer:
            self.refuse("foreign-cluster", item, f"belongs to cluster {endpoint.cluster}, not {self.ctx.peer}")
        elif endpoint.service not in self.exports:
            self.refuse("not-exported", item, f"service {endpoint.service} is not exported to {self.ctx.local}")
        elif endpoint.service not in self.services:
            self.refuse("unknown-service", item, f"service {endpoint.service} was not sent")
        elif self.ctx.localities and endpoint.locality not in self.ctx.localities:
            self.refuse("foreign-locality", item, f"locality {endpoint.locality} is not one of {self.ctx.peer}'s")
        elif not self._identity_ok(endpoint):
            self.refuse(
                "identity-mismatch", item, f"identity {endpoint.label_map[IDENTITY_LABEL]} is not under {self.ctx.spiffe_prefix}"
            )
        elif endpoint.id in self.put_ids:
            self.refuse("duplicate", item, f"the id was already sent in this message (for {self.endpoints[endpoint.id].service})")
        else:
            self.put_ids.add(endpoint.id)
            self.endpoints[endpoint.id] = endpoint

    def _identity_ok(self, endpoint: Endpoint) -> bool:
        identity = endpoint.label_map.get(IDENTITY_LABEL)
        return identity is None or identity.startswith(self.ctx.spiffe_prefix + "/")

    def view(self, revision: int) -> ExportView:
        return ExportView(self.ctx.peer, revision, self.services, self.endpoints, self.exports)


def accept_snapshot(
    ctx: PeerContext, data: object, *, sender: str | None
) -> tuple[ExportView, list[Refusal]]:
    """A fresh view from a peer's snapshot; raises `MessageRefused` when nothing of it can be trusted."""
    check_sender(ctx, sender)
    data = _header(ctx, data, "snapshot")
    b = _Builder(ctx, ExportView(ctx.peer))
    for i, raw in enumerate(_items(data, "exports")):
        b.put_export(raw, f"exports[{i}]")
    for i, raw in enumerate(_items(data, "services")):
        b.put_service(raw, f"services[{i}]")
    for i, raw in enumerate(_items(data, "endpoints")):
        b.put_endpoint(raw, f"endpoints[{i}]")
    return b.view(data["revision"]), b.refusals


def accept_delta(
    ctx: PeerContext, view: ExportView, data: object, *, sender: str | None
) -> tuple[ExportView, list[Refusal]]:
    """`view` with a peer's delta applied in make-before-break order (exports, services, endpoints
    added first; endpoints, services, exports removed last)."""
    check_sender(ctx, sender)
    data = _header(ctx, data, "delta")
    if data["revision"] <= view.revision:
        raise MessageRefused(
            Refusal(ctx.peer, "old-revision", "delta", f"revision {data['revision']} is not after {view.revision}")
        )
    upsert = data.get("upsert") if isinstance(data.get("upsert"), Mapping) else {}
    remove = data.get("remove") if isinstance(data.get("remove"), Mapping) else {}
    b = _Builder(ctx, view)
    for i, raw in enumerate(_items(upsert, "exports")):
        b.put_export(raw, f"upsert.exports[{i}]")
    for i, raw in enumerate(_items(upsert, "services")):
        b.put_service(raw, f"upsert.services[{i}]")
    for i, raw in enumerate(_items(upsert, "endpoints")):
        b.put_endpoint(raw, f"upsert.endpoints[{i}]")
    for key in _items(remove, "endpoints"):
        if isinstance(key, str):
            b.endpoints.pop(key, None)
    for key in _items(remove, "services"):
        if isinstance(key, str):
            b.services.pop(key, None)
            for i in [i for i, e in b.endpoints.items() if e.service == key]:
                del b.endpoints[i]
    for key in _items(remove, "exports"):
        if isinstance(key, str):
            b.drop_export(key)
    return b.view(data["revision"]), b.refusals


# --- the merged catalog ---------------------------------------------------------------------------


def merge(local: Catalog, views: Iterable[ExportView], *, revision: int | None = None) -> Catalog:
    """Local catalog plus every peer's accepted view. Local values win a key conflict; imported
    endpoints keep their origin cluster and locality; exports and peers stay the local ones."""
    services = dict(local.services)
    endpoints = dict(local.endpoints)
    for view in views:
        for key, service in view.services.items():
            services.setdefault(key, service)
        for ident, endpoint in view.endpoints.items():
            endpoints.setdefault(ident, endpoint)
    return Catalog(
        cluster=local.cluster,
        revision=local.revision if revision is None else revision,
        services=services,
        endpoints=endpoints,
        exports=local.exports,
        peers=local.peers,
    )


@attrs.frozen
class Consistency:
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    duplicated: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.duplicated or self.changed)


def check_consistency(held: Iterable[Endpoint], reference: Iterable[Endpoint]) -> Consistency:
    """Compare the endpoints a cluster holds with what their owners say exists.

    Missing: in the reference, not held. Unexpected: held, not in the reference. Duplicated: one
    `(service, cluster, address, port)` held under several entries. Changed: same id, other value.
    """
    held = list(held)
    ref = {e.id: e for e in reference}
    ids = Counter(e.id for e in held)
    keys = Counter((e.service, e.cluster, e.address, e.port) for e in held)
    by_id = {e.id: e for e in held}
    return Consistency(
        missing=tuple(sorted(i for i in ref if i not in by_id)),
        unexpected=tuple(sorted(i for i in by_id if i not in ref)),
        duplicated=tuple(sorted({i for i, n in ids.items() if n > 1} | {
            e.id for e in held if keys[(e.service, e.cluster, e.address, e.port)] > 1})),  # fmt: skip
        changed=tuple(sorted(i for i, e in by_id.items() if i in ref and ref[i] != e)),
    )
