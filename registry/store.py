"""The typed registry over any `Backend`: where each catalog value lives and how it is written and watched.

Owns the key layout and the rules of registration:

    /isthmus/clusters/<name>                          known clusters (Cluster)
    /isthmus/<cluster>/services/<svc>                 Service            (svc = name.namespace)
    /isthmus/<cluster>/endpoints/<svc>/<endpoint-id>  Endpoint           (id = cluster/address:port)
    /isthmus/<cluster>/exports/<svc>                  Export
    /isthmus/<cluster>/peers/<name>                   Peer
    /isthmus/<cluster>/policies/<svc>                 Policy             (failover policy, JSON)
    /isthmus/<cluster>/routes/<svc>                   RouteRules         (route rules, JSON)

Values are the JSON of `registry.codec`. A registration (service + its endpoints) is one
transaction, guarded so that the cluster must be known and endpoint ids must be new; with
a TTL the endpoints hang on a lease that `serve_heartbeat` keeps alive. `load_catalog` reads
one cluster's prefix into a `Catalog`; `watch_catalog` yields a new immutable `Catalog` for
every change after it. Imports trio and the registry only (never `gateway` or `federation`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import aclosing
from types import MappingProxyType
from typing import Any

import attrs
import trio

from registry import codec
from registry.backend import Backend, Compare, Delete, KeyValue, Put, WatchBatch
from registry.errors import (
    Conflict,
    DuplicateEndpoint,
    LeaseExpired,
    RegistryUnavailable,
    UnknownCluster,
    ValidationError,
)
from registry.model import (
    Catalog,
    Cluster,
    Endpoint,
    Export,
    Peer,
    Policy,
    RouteRules,
    Service,
    check_label,
    parse_service_key,
)

log = logging.getLogger(__name__)

ROOT = "/isthmus/"
CLUSTERS = ROOT + "clusters/"
RESERVED_CLUSTER_NAMES = frozenset({"clusters"})  # would collide with the known-clusters prefix


def cluster_prefix(cluster: str) -> str:
    return f"{ROOT}{cluster}/"


def service_key(cluster: str, svc: str) -> str:
    return f"{ROOT}{cluster}/services/{svc}"


def endpoint_key(cluster: str, svc: str, endpoint_id: str) -> str:
    return f"{ROOT}{cluster}/endpoints/{svc}/{endpoint_id}"


def endpoints_prefix(cluster: str, svc: str | None = None) -> str:
    return f"{ROOT}{cluster}/endpoints/" + (f"{svc}/" if svc else "")


def export_key(cluster: str, svc: str) -> str:
    return f"{ROOT}{cluster}/exports/{svc}"


def peer_key(cluster: str, name: str) -> str:
    return f"{ROOT}{cluster}/peers/{name}"


def policy_key(cluster: str, svc: str) -> str:
    return f"{ROOT}{cluster}/policies/{svc}"


def routes_key(cluster: str, svc: str) -> str:
    return f"{ROOT}{cluster}/routes/{svc}"


def known_cluster_key(name: str) -> str:
    return CLUSTERS + name


def parse_key(key: str) -> tuple[str, str, str] | None:
    """`(cluster, kind, name)` of a catalog key, kind in services/endpoints/exports/peers/policies/routes.

    For endpoints `name` is the endpoint id (the service is part of the value). Keys that
    are not catalog keys give None.
    """
    if not key.startswith(ROOT):
        return None
    cluster, _, rest = key[len(ROOT) :].partition("/")
    kind, _, name = rest.partition("/")
    if not name:
        return None
    if kind == "endpoints":
        _svc, _, name = name.partition("/")
        if not name:
            return None
    elif kind not in ("services", "exports", "peers", "policies", "routes"):
        return None
    return cluster, kind, name


def check_cluster_name(field: str, name: object) -> str:
    check_label(field, name)
    if name in RESERVED_CLUSTER_NAMES:
        raise ValidationError(f"{field}: {name!r} is reserved")
    return str(name)


# ---------------------------------------------------------------------------------------------
# Building catalogs from keys (pure)
# ---------------------------------------------------------------------------------------------

_DECODERS = {
    "services": codec.service_from_dict,
    "endpoints": codec.endpoint_from_dict,
    "exports": codec.export_from_dict,
    "peers": codec.peer_from_dict,
    "policies": codec.policy_from_dict,
    "routes": codec.routes_from_dict,
}


class CatalogBuilder:
    """One cluster's catalog as it is being followed: applies key changes, hands out immutable snapshots.

    Copy-on-write: a collection touched by a batch is copied once, so snapshots already
    handed out never change. A stored value that does not decode is skipped with a warning
    (one bad writer must not blind every gateway).
    """

    def __init__(self, cluster: str, base: Catalog | None = None) -> None:
        self.cluster = cluster
        self.revision = base.revision if base else 0
        self._parts: dict[str, Mapping[str, Any]] = {
            "services": base.services if base else MappingProxyType({}),
            "endpoints": base.endpoints if base else MappingProxyType({}),
            "exports": base.exports if base else MappingProxyType({}),
            "peers": base.peers if base else MappingProxyType({}),
            "policies": base.policies if base else MappingProxyType({}),
            "routes": base.routes if base else MappingProxyType({}),
        }
        self._catalog = base if base is not None and base.cluster == cluster else None

    @staticmethod
    def _decode(key: str, kind: str, raw: bytes) -> Any | None:
        try:
            return _DECODERS[kind](codec.loads(raw, key), key)
        except ValidationError as exc:
            log.warning("registry: skipping %s: %s", key, exc)
            return None

    def reset(self, revision: int, kvs: Iterable[KeyValue]) -> None:
        parts: dict[str, dict[str, Any]] = {k: {} for k in _DECODERS}
        for kv in kvs:
            parsed = parse_key(kv.key)
            if parsed is None or parsed[0] != self.cluster:
                continue
            value = self._decode(kv.key, parsed[1], kv.value)
            if value is not None:
                parts[parsed[1]][parsed[2]] = value
        self._parts = {k: MappingProxyType(v) for k, v in parts.items()}
        self.revision = revision
        self._catalog = None

    def apply(self, batch: WatchBatch) -> bool:
        """Apply one watch batch; True if the catalog changed."""
        if batch.snapshot is not None:
            self.reset(batch.revision, batch.snapshot)
            return True
        changed: dict[str, dict[str, Any]] = {}
        for event in batch.events:
            parsed = parse_key(event.key)
            if parsed is None or parsed[0] != self.cluster:
                continue
            _, kind, name = parsed
            part = changed.get(kind)
            if part is None:
                part = changed[kind] = dict(self._parts[kind])
            if event.kind == "delete":
                part.pop(name, None)
            else:
                value = self._decode(event.key, kind, event.value)
                if value is None:
                    part.pop(name, None)
                else:
                    part[name] = value
        if batch.revision > self.revision:
            self.revision = batch.revision
        if not changed:
            return False
        for kind, part in changed.items():
            self._parts[kind] = MappingProxyType(part)
        self._catalog = None
        return True

    def catalog(self) -> Catalog:
        if self._catalog is None or self._catalog.revision != self.revision:
            self._catalog = Catalog(cluster=self.cluster, revision=self.revision, **self._parts)
        return self._catalog


# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class Registration:
    """What `register_endpoints` wrote: the revision, the lease (0 without TTL) and the keys."""

    revision: int
    lease: int
    keys: tuple[str, ...]


class Store:
    """Typed reads, writes and watches of the catalog over one `Backend`."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    # -- clusters ---------------------------------------------------------------------------

    async def add_cluster(self, cluster: Cluster) -> int:
        """Declare a cluster (idempotent: the same declaration again changes nothing, so it does not
        move the revision that registrations guard on, even when two processes declare it at once)."""
        check_cluster_name("cluster.name", cluster.name)
        key = known_cluster_key(cluster.name)
        wanted = codec.cluster_to_dict(cluster)
        while True:
            _, kvs = await self.backend.get_prefix(key)
            current = next((kv for kv in kvs if kv.key == key), None)
            if current is not None and codec.loads(current.value) == wanted:
                return current.mod_revision
            try:
                return await self.backend.txn(
                    [Put(key, codec.dumps(wanted))], [Compare(key, current.mod_revision if current else 0)]
                )
            except Conflict:
                continue  # someone declared it meanwhile: look again

    async def clusters(self) -> dict[str, Cluster]:
        _, kvs = await self.backend.get_prefix(CLUSTERS)
        out = {}
        for kv in kvs:
            try:
                cluster = codec.cluster_from_dict(codec.loads(kv.value, kv.key), kv.key)
            except ValidationError as exc:
                log.warning("registry: skipping %s: %s", kv.key, exc)
                continue
            out[cluster.name] = cluster
        return out

    async def get_cluster(self, name: str) -> tuple[Cluster, int]:
        """The declared cluster and the revision of its declaration; `UnknownCluster` otherwise."""
        check_label("cluster", name)
        _, kvs = await self.backend.get_prefix(known_cluster_key(name))
        for kv in kvs:
            if kv.key == known_cluster_key(name):
                return codec.cluster_from_dict(codec.loads(kv.value, kv.key), kv.key), kv.mod_revision
        known = sorted(await self.clusters())
        raise UnknownCluster(
            f"cluster {name!r} is not known to the registry (known: {', '.join(known) or 'none'}; "
            f"declare it with `isthmus registry cluster add`)"
        )

    # -- services and endpoints -------------------------------------------------------------

    async def get_service(self, cluster: str, service: str) -> Service | None:
        """The registered service `name.namespace` in `cluster`, or None."""
        key = service_key(cluster, service)
        _, kvs = await self.backend.get_prefix(key)
        for kv in kvs:
            if kv.key == key:
                return codec.service_from_dict(codec.loads(kv.value, key), key)
        return None

    async def register_service(self, cluster: str, service: Service) -> int:
        _, declared = await self.get_cluster(cluster)
        return await self._txn(
            [Put(service_key(cluster, service.key), codec.dumps(codec.service_to_dict(service)))],
            [Compare(known_cluster_key(cluster), declared)],
            cluster,
        )

    async def register_endpoints(
        self,
        service: Service,
        endpoints: Sequence[Endpoint],
        *,
        ttl_s: float | None = None,
        replace: bool = False,
        check_cluster_ids: bool = True,
    ) -> Registration:
        """Write `service` and `endpoints` (all of one cluster) in one transaction.

        Refused, with nothing written: an unknown cluster (`UnknownCluster`); an endpoint of
        another service or cluster, or outside the cluster's region and zones
        (`ValidationError`); an endpoint id given twice or already registered
        (`DuplicateEndpoint`, unless `replace`). `check_cluster_ids` also looks for the id
        under the cluster's other services (one more read; bulk loaders turn it off). With
        `ttl_s` the endpoints live on a new lease: keep it with `serve_heartbeat`.
        """
        if not endpoints:
            raise ValidationError("endpoints: at least one endpoint is needed")
        clusters = {e.cluster for e in endpoints}
        if len(clusters) != 1:
            raise ValidationError(f"endpoint.cluster: one registration is for one cluster, got {sorted(clusters)}")
        cluster_name = endpoints[0].cluster
        cluster, declared = await self.get_cluster(cluster_name)
        seen: set[str] = set()
        for e in endpoints:
            if e.service != service.key:
                raise ValidationError(f"endpoint.service: {e.service!r} is not the service registered ({service.key})")
            if e.locality.region != cluster.region or e.locality.zone not in cluster.zones:
                raise ValidationError(
                    f"endpoint.locality: {e.locality} is not a locality of cluster {cluster.name} "
                    f"({', '.join(str(loc) for loc in cluster.localities())})"
                )
            if e.id in seen:
                raise DuplicateEndpoint(f"endpoint.id: {e.id!r} is given twice")
            seen.add(e.id)
        if check_cluster_ids and not replace:
            _, existing = await self.backend.get_prefix(endpoints_prefix(cluster_name))
            for kv in existing:
                parsed = parse_key(kv.key)
                if parsed and parsed[2] in seen:
                    raise DuplicateEndpoint(f"endpoint.id: {parsed[2]!r} is already registered in cluster {cluster_name}")
        lease = 0
        if ttl_s is not None:
            if not (isinstance(ttl_s, int | float) and 1 <= ttl_s <= 86_400):
                raise ValidationError(f"ttl: {ttl_s!r} is not a number of seconds in 1-86400")
            lease = await self.backend.grant_lease(ttl_s)
        keys = [endpoint_key(cluster_name, service.key, e.id) for e in endpoints]
        ops: list[Put | Delete] = [Put(service_key(cluster_name, service.key), codec.dumps(codec.service_to_dict(service)))]
        ops += [Put(k, codec.dumps(codec.endpoint_to_dict(e)), lease=lease) for k, e in zip(keys, endpoints, strict=True)]
        guards = [Compare(known_cluster_key(cluster_name), declared)]
        if not replace:
            guards += [Compare(k, 0) for k in keys]
        try:
            revision = await self.backend.txn(ops, guards)
        except Conflict:
            if lease:
                await self.backend.revoke(lease)
            _, current = await self.backend.get_prefix(endpoints_prefix(cluster_name, service.key))
            taken = sorted({kv.key for kv in current} & set(keys))
            if taken:
                raise DuplicateEndpoint(
                    f"endpoint.id: {taken[0][len(endpoints_prefix(cluster_name, service.key)) :]!r} "
                    f"is already registered for {service.key} in cluster {cluster_name}"
                ) from None
            await self.get_cluster(cluster_name)  # raises UnknownCluster if it was removed meanwhile
            raise
        return Registration(revision, lease, tuple(keys))

    async def register_endpoint(self, service: Service, endpoint: Endpoint, **kwargs: Any) -> Registration:
        return await self.register_endpoints(service, [endpoint], **kwargs)

    async def deregister(self, cluster: str, service: str, endpoint_id: str | None = None) -> int:
        """Remove one endpoint, or (no `endpoint_id`) the service with all its endpoints and its export.

        Removing something that is not registered is `ValidationError` naming it.
        """
        parse_service_key(service)
        await self.get_cluster(cluster)
        if endpoint_id is not None:
            key = endpoint_key(cluster, service, endpoint_id)
            _, kvs = await self.backend.get_prefix(key)
            match = [kv for kv in kvs if kv.key == key]
            if not match:
                raise ValidationError(f"endpoint: {endpoint_id!r} is not registered for {service} in cluster {cluster}")
            return await self.backend.txn([Delete(key)], [Compare(key, match[0].mod_revision)])
        _, kvs = await self.backend.get_prefix(service_key(cluster, service))
        if not any(kv.key == service_key(cluster, service) for kv in kvs):
            raise ValidationError(f"service: {service!r} is not registered in cluster {cluster}")
        return await self.backend.txn(
            [
                Delete(service_key(cluster, service)),
                Delete(endpoints_prefix(cluster, service), prefix=True),
                Delete(export_key(cluster, service)),
            ]
        )

    # -- exports and peers ------------------------------------------------------------------

    async def set_export(self, cluster: str, export: Export) -> int:
        _, declared = await self.get_cluster(cluster)
        return await self._txn(
            [Put(export_key(cluster, export.service), codec.dumps(codec.export_to_dict(export)))],
            [Compare(known_cluster_key(cluster), declared)],
            cluster,
        )

    async def remove_export(self, cluster: str, service: str) -> int:
        parse_service_key(service)
        return await self.backend.txn([Delete(export_key(cluster, service))])

    async def put_peer(self, cluster: str, peer: Peer) -> int:
        _, declared = await self.get_cluster(cluster)
        if peer.name == cluster:
            raise ValidationError(f"peer.name: {peer.name!r} is this cluster itself")
        return await self._txn(
            [Put(peer_key(cluster, peer.name), codec.dumps(codec.peer_to_dict(peer)))],
            [Compare(known_cluster_key(cluster), declared)],
            cluster,
        )

    async def remove_peer(self, cluster: str, name: str) -> int:
        check_label("peer.name", name)
        return await self.backend.txn([Delete(peer_key(cluster, name))])

    # -- policies and route rules (validated by the writer: the registry does not interpret them) --

    async def set_policy(self, cluster: str, policy: Policy) -> int:
        _, declared = await self.get_cluster(cluster)
        return await self._txn(
            [Put(policy_key(cluster, policy.service), codec.dumps(codec.policy_to_dict(policy)))],
            [Compare(known_cluster_key(cluster), declared)],
            cluster,
        )

    async def remove_policy(self, cluster: str, service: str) -> int:
        parse_service_key(service)
        return await self.backend.txn([Delete(policy_key(cluster, service))])

    async def set_routes(self, cluster: str, routes: RouteRules) -> int:
        _, declared = await self.get_cluster(cluster)
        return await self._txn(
            [Put(routes_key(cluster, routes.service), codec.dumps(codec.routes_to_dict(routes)))],
            [Compare(known_cluster_key(cluster), declared)],
            cluster,
        )

    async def remove_routes(self, cluster: str, service: str) -> int:
        parse_service_key(service)
        return await self.backend.txn([Delete(routes_key(cluster, service))])

    async def _txn(self, ops: Sequence[Put | Delete], guards: Sequence[Compare], cluster: str) -> int:
        try:
            return await self.backend.txn(ops, guards)
        except Conflict:
            await self.get_cluster(cluster)  # UnknownCluster if it went away; else a real conflict
            raise

    # -- reading and watching ---------------------------------------------------------------

    async def load_catalog(self, cluster: str) -> Catalog:
        """One cluster's catalog at the backend's current revision (the cluster must be known)."""
        await self.get_cluster(cluster)
        revision, kvs = await self.backend.get_prefix(cluster_prefix(cluster))
        builder = CatalogBuilder(cluster)
        builder.reset(revision, kvs)
        return builder.catalog()

    async def watch_catalog(
        self, cluster: str, from_revision: int = 0, *, base: Catalog | None = None
    ) -> AsyncIterator[Catalog]:
        """Every catalog of `cluster` newer than `from_revision`, as changes happen.

        With `base` (a catalog the caller already holds, e.g. the last-known-good one) the
        watch resumes from `base.revision` without re-reading everything; otherwise the
        current catalog is read first and yielded if it is newer than `from_revision`. A
        backend that compacted past the revision resumes with a snapshot. Each yielded
        catalog is a new immutable value; batches that do not touch the catalog yield nothing.
        """
        check_label("cluster", cluster)
        if base is not None:
            builder = CatalogBuilder(cluster, base)
            since = base.revision
        else:
            revision, kvs = await self.backend.get_prefix(cluster_prefix(cluster))
            builder = CatalogBuilder(cluster)
            builder.reset(revision, kvs)
            since = revision
            if revision > from_revision:
                yield builder.catalog()
        async with aclosing(self.backend.watch(cluster_prefix(cluster), since)) as batches:
            async for batch in batches:
                if builder.apply(batch):
                    yield builder.catalog()

    # -- liveness ---------------------------------------------------------------------------

    async def serve_heartbeat(
        self,
        service: Service,
        endpoints: Sequence[Endpoint],
        ttl_s: float,
        *,
        replace: bool = True,
        registration: Registration | None = None,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Register `endpoints` on a `ttl_s` lease and keep it alive until cancelled.

        Keepalives go every ttl/3. If the lease was lost (the process stalled past the TTL,
        or the backend forgot it) the endpoints are registered again on a new lease. While
        the backend is unreachable it retries with capped backoff (the endpoints expire on
        their own if that lasts longer than the TTL). `task_status.started(registration)`
        after the first registration; on cancellation the lease is revoked, so the
        endpoints disappear at once. A caller that registered already (to see refusals
        before it starts the task) passes its `registration`.
        """
        if registration is None or not registration.lease:
            registration = await self.register_endpoints(service, endpoints, ttl_s=ttl_s, replace=replace)
        task_status.started(registration)
        lease = registration.lease
        try:
            failures = 0
            while True:
                await trio.sleep(ttl_s / 3 if failures == 0 else min(ttl_s / 3, 0.2 * 2**failures))
                try:
                    await self.backend.keepalive(lease)
                    failures = 0
                except LeaseExpired:
                    log.warning("registry: lease %#x of %s expired; registering again", lease, service.key)
                    lease = (await self.register_endpoints(service, endpoints, ttl_s=ttl_s, replace=True)).lease
                    failures = 0
                except RegistryUnavailable as exc:
                    failures += 1
                    log.warning("registry: keepalive of %s failed (%s); retrying", service.key, exc)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await self.backend.revoke(lease)
                except (RegistryUnavailable, LeaseExpired):
                    pass


def endpoints_by_service(catalog: Catalog) -> dict[str, list[Endpoint]]:
    out: dict[str, list[Endpoint]] = {}
    for e in catalog.endpoints.values():
        out.setdefault(e.service, []).append(e)
    return out

