"""The routing table: one immutable view of a catalog, compiled for per-request lookups.

Owns how a request finds its service (`:authority`/`Host` as `name.namespace` or an alias
`name.namespace.<suffix>`, TLS SNI, or the outbound TCP port) and which endpoints a listener may
use (the east-west listener: local endpoints only; the outbound listener: all, local first).
A catalog reload builds a new table and swaps one reference; requests keep the table they began with.

Pure: no trio, no sockets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from gateway.errors import ClusterUnknown, NoHealthyEndpoint, ServiceUnknown
from gateway.picker import Picker, RoundRobinPicker
from registry.model import Catalog, Endpoint, Locality, Service

PickerFactory = Callable[[Sequence[Endpoint], str, Locality], Picker]


def round_robin_factory(endpoints: Sequence[Endpoint], cluster: str, locality: Locality) -> Picker:
    return RoundRobinPicker(endpoints, cluster=cluster, locality=locality)


def host_of(authority: str) -> str:
    """The host part of an authority, lower-cased, without port or trailing dot."""
    host = authority.strip().lower()
    if host.startswith("["):
        host = host[: host.find("]") + 1]
    elif ":" in host:
        host = host.rsplit(":", 1)[0]
    return host.rstrip(".")


class RoutingTable:
    """Lookups for one catalog revision. Pickers are built once per service and kept with the table."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        cluster: str,
        locality: Locality,
        alias_suffixes: Sequence[str] = (),
        tcp_ports: Mapping[int, str] | None = None,
        picker_factory: PickerFactory = round_robin_factory,
    ) -> None:
        self.catalog = catalog
        self.cluster = cluster
        self.locality = locality
        self.revision = catalog.revision
        self._factory = picker_factory
        self.hosts: dict[str, str] = {}
        for key in catalog.services:
            self.hosts[key] = key
            for suffix in alias_suffixes:
                self.hosts[f"{key}.{suffix}"] = key
        self.tcp_ports = dict(tcp_ports or {})
        by_service: dict[str, list[Endpoint]] = {}
        for endpoint in catalog.endpoints.values():
            by_service.setdefault(endpoint.service, []).append(endpoint)
        self._endpoints = {k: tuple(sorted(v, key=lambda e: e.id)) for k, v in by_service.items()}
        self._pickers: dict[tuple[str, bool], Picker] = {}

    def service(self, key: str) -> Service:
        try:
            return self.catalog.services[key]
        except KeyError:
            raise ServiceUnknown(f"no service {key!r}") from None

    def service_for_authority(self, authority: str) -> Service:
        key = self.hosts.get(host_of(authority))
        if key is None:
            raise ServiceUnknown(f"no service for authority {authority!r}")
        return self.catalog.services[key]

    def service_for_sni(self, sni: str | None) -> Service | None:
        if not sni:
            return None
        key = self.hosts.get(sni.lower().rstrip("."))
        return None if key is None else self.catalog.services[key]

    def service_for_port(self, port: int) -> Service:
        key = self.tcp_ports.get(port)
        if key is None:
            raise ServiceUnknown(f"no service mapped to TCP port {port}")
        return self.service(key)

    def endpoints(self, service_key: str, *, local_only: bool) -> tuple[Endpoint, ...]:
        found = self._endpoints.get(service_key, ())
        if local_only:
            return tuple(e for e in found if e.cluster == self.cluster)
        return found

    def picker(self, service_key: str, *, local_only: bool) -> Picker:
        picker = self._pickers.get((service_key, local_only))
        if picker is None:
            endpoints = self.endpoints(service_key, local_only=local_only)
            if not endpoints:
                raise NoHealthyEndpoint(f"service {service_key!r} has no endpoints")
            picker = self._factory(endpoints, self.cluster, self.locality)
            self._pickers[(service_key, local_only)] = picker
        return picker

    def subset_picker(self, service_key: str, *, local_only: bool, subset: tuple[tuple[str, str], ...],
                      factory: PickerFactory | None = None) -> Picker:
        """A picker over the endpoints whose labels include `subset` (a route rule's label selector),
        built once per table; `factory` keeps subset balancers apart from the service's own."""
        key = (service_key, local_only, subset)
        picker = self._pickers.get(key)  # type: ignore[call-overload]
        if picker is None:
            endpoints = tuple(
                e for e in self.endpoints(service_key, local_only=local_only)
                if all(dict(e.labels).get(k) == v for k, v in subset)
            )
            if not endpoints:
                wanted = ",".join(f"{k}={v}" for k, v in subset)
                raise NoHealthyEndpoint(f"service {service_key!r} has no endpoint in subset {wanted}")
            picker = (factory or self._factory)(endpoints, self.cluster, self.locality)
            self._pickers[key] = picker  # type: ignore[index]
        return picker

    def peer_gateway(self, cluster: str) -> str:
        peer = self.catalog.peers.get(cluster)
        if peer is None:
            raise ClusterUnknown(f"cluster {cluster!r} is not a linked peer")
        return peer.gateway

    def exported_to(self, service_key: str, peer_cluster: str | None) -> bool:
        export = self.catalog.exports.get(service_key)
        return export is not None and peer_cluster is not None and export.allows(peer_cluster)
