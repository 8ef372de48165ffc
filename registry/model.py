"""The catalog model: frozen, validated attrs values and nothing else (no I/O).

Vocabulary (DESIGN): a *cluster* has a *locality* (`region/zone`); a *service* is
`name.namespace` with ports and a protocol; an *endpoint* is one instance of a service in
one cluster and locality; an *export* lets named peers (or `*`) consume a service; a *peer*
is a remote cluster this one has linked; a *policy* and *route rules* are a service's failover
policy and traffic rules (stored as plain JSON, interpreted by the gateway); a *catalog* is the
immutable snapshot, at a revision, of all of these.

Names follow DNS-1123 labels (lower-case alphanumerics and `-`, at most 63 characters,
starting and ending with an alphanumeric), as Kubernetes requires of namespaces and
services. Validation errors are `ValidationError` whose message names the field.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import attrs

from registry.errors import ValidationError

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4 = re.compile(rf"^{_OCTET}(\.{_OCTET}){{3}}$")  # the fast path of check_host (catalogs hold 100k of these)
_SPACE = re.compile(r"\s")
PROTOCOLS = ("http", "http2", "grpc", "tcp")
# How gateways carry a service across clusters: `http` terminates and routes per request (L7);
# `passthrough` routes the TLS connection on its SNI and pumps bytes (L4, end-to-end TLS kept).
GATEWAY_MODES = ("http", "passthrough")
ANY_PEER = "*"


def check_label(field: str, value: object) -> str:
    """Return `value` if it is a DNS-1123 label, else raise naming `field`."""
    if not isinstance(value, str) or not DNS1123_LABEL.match(value):
        raise ValidationError(
            f"{field}: {value!r} is not a DNS-1123 label (lower-case letters, digits and '-', 1-63 characters)"
        )
    return value


def check_port(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValidationError(f"{field}: {value!r} is not a port number (1-65535)")
    return value


def check_host(field: str, value: object) -> str:
    """An IP address or a DNS name (lower-case labels separated by dots)."""
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{field}: {value!r} is not a host")
    if IPV4.match(value):
        return value
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if len(value) > 253 or not all(DNS1123_LABEL.match(part) for part in value.split(".")):
        raise ValidationError(f"{field}: {value!r} is not an IP address or DNS name")
    return value


def parse_host_port(field: str, value: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` into its parts, validated."""
    if not isinstance(value, str) or ":" not in value:
        raise ValidationError(f"{field}: {value!r} is not host:port")
    host, _, port_text = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not port_text.isdigit():
        raise ValidationError(f"{field}: {value!r} has no numeric port")
    return check_host(field, host), check_port(field, int(port_text))


def _frozen_mapping(value: Mapping[str, Any] | Iterable[tuple[str, Any]] | None) -> Mapping[str, Any]:
    # A read-only view is kept as is: watchers build one fresh dict per change and hand it
    # over, so a 100,000-endpoint catalog is not copied twice per update.
    if isinstance(value, MappingProxyType):
        return value
    return MappingProxyType(dict(value or {}))


_KNOWN_LABELS: set[str] = set()  # labels already validated: catalogs repeat a few names 100,000 times


def _validate_label(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value.__class__ is str and value in _KNOWN_LABELS:
        return
    check_label(f"{type(instance).__name__.lower()}.{attribute.name}", value)
    if len(_KNOWN_LABELS) < 100_000:
        _KNOWN_LABELS.add(value)


@attrs.frozen(order=True)
class Locality:
    """Where an endpoint or cluster lives: `region/zone`. Failover priority is computed from it."""

    region: str = attrs.field(validator=_validate_label)
    zone: str = attrs.field(validator=_validate_label)

    @classmethod
    def parse(cls, text: str) -> Locality:
        region, sep, zone = str(text).partition("/")
        if not sep:
            raise ValidationError(f"locality: {text!r} is not region/zone (e.g. us-east/us-east-1a)")
        return cls(region, zone)

    def __str__(self) -> str:
        return f"{self.region}/{self.zone}"


@attrs.frozen
class Cluster:
    """One failure domain with its own control plane and gateways."""

    name: str = attrs.field(validator=_validate_label)
    region: str = attrs.field(validator=_validate_label)
    zones: tuple[str, ...] = attrs.field(converter=tuple)

    @zones.validator
    def _check_zones(self, attribute: attrs.Attribute, value: tuple[str, ...]) -> None:
        if not value:
            raise ValidationError(f"cluster {self.name}: zones: at least one zone is needed")
        for zone in value:
            check_label("cluster.zones", zone)

    def localities(self) -> tuple[Locality, ...]:
        return tuple(Locality(self.region, zone) for zone in self.zones)


@functools.lru_cache(maxsize=4096)
def parse_service_key(text: str) -> tuple[str, str]:
    """`name.namespace` into its two labels."""
    name, sep, namespace = str(text).partition(".")
    if not sep:
        raise ValidationError(f"service: {text!r} is not name.namespace (e.g. checkout.shop)")
    return check_label("service.name", name), check_label("service.namespace", namespace)


@attrs.frozen
class Service:
    """`name.namespace` with its ports and protocol."""

    name: str = attrs.field(validator=_validate_label)
    namespace: str = attrs.field(validator=_validate_label)
    protocol: str = attrs.field(default="http")
    ports: tuple[int, ...] = attrs.field(default=(), converter=tuple)
    gateway_mode: str = attrs.field(default="http")

    @gateway_mode.validator
    def _check_mode(self, attribute: attrs.Attribute, value: str) -> None:
        if value not in GATEWAY_MODES:
            raise ValidationError(f"service.gateway_mode: {value!r} is not one of {', '.join(GATEWAY_MODES)}")

    @protocol.validator
    def _check_protocol(self, attribute: attrs.Attribute, value: str) -> None:
        if value not in PROTOCOLS:
            raise ValidationError(f"service.protocol: {value!r} is not one of {', '.join(PROTOCOLS)}")

    @ports.validator
    def _check_ports(self, attribute: attrs.Attribute, value: tuple[int, ...]) -> None:
        for port in value:
            check_port("service.ports", port)

    @property
    def key(self) -> str:
        return f"{self.name}.{self.namespace}"

    @classmethod
    def from_key(cls, key: str, **kwargs: Any) -> Service:
        name, namespace = parse_service_key(key)
        return cls(name, namespace, **kwargs)


class Health(enum.Enum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    DRAINING = "draining"
    UNKNOWN = "unknown"


_HEALTH_BY_VALUE = {h.value: h for h in Health}


def _health(value: Health | str) -> Health:
    found = _HEALTH_BY_VALUE.get(value) if value.__class__ is str else None
    if found is not None:
        return found
    try:
        return Health(value)
    except ValueError:
        names = ", ".join(h.value for h in Health)
        raise ValidationError(f"endpoint.health: {value!r} is not one of {names}") from None


def _locality(value: Locality | str) -> Locality:
    if isinstance(value, Locality):
        return value
    if isinstance(value, str):
        return Locality.parse(value)
    raise ValidationError(f"endpoint.locality: {value!r} is not region/zone")


def _labels(value: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> tuple[tuple[str, str], ...]:
    if not value:
        return ()
    items = dict(value)
    for key, val in items.items():
        if not isinstance(key, str) or not isinstance(val, str):
            raise ValidationError(f"endpoint.labels: {key!r}={val!r} must be strings")
    return tuple(sorted(items.items()))


@attrs.frozen
class Endpoint:
    """One instance of a service: address, port, cluster, locality, weight, labels, health."""

    service: str
    cluster: str = attrs.field(validator=_validate_label)
    address: str
    port: int
    locality: Locality = attrs.field(converter=_locality)
    weight: int = 1
    labels: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_labels)
    health: Health = attrs.field(default=Health.HEALTHY, converter=_health)
    id: str = attrs.field(default="")

    def __attrs_post_init__(self) -> None:
        # `x.__class__ is int` first: a watcher validates 100,000 endpoints when it reads a large
        # catalog, and the exact-type test is the cheap common case (bool is a subclass of int).
        parse_service_key(self.service)
        ident = self.id
        if ident and (ident.__class__ is not str or len(ident) > 253 or _SPACE.search(ident)):
            raise ValidationError(f"endpoint.id: {ident!r} must be at most 253 characters without spaces")
        address = self.address
        if not (address.__class__ is str and IPV4.match(address)):
            check_host("endpoint.address", address)
        port = self.port
        if not (port.__class__ is int and 1 <= port <= 65535):
            check_port("endpoint.port", port)
        weight = self.weight
        if not (weight.__class__ is int and 1 <= weight <= 1000):
            raise ValidationError(f"endpoint.weight: {weight!r} is not an integer in 1-1000")
        if not ident:
            object.__setattr__(self, "id", f"{self.cluster}/{address}:{port}")

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


@attrs.frozen
class Export:
    """A cluster's statement that `service` may be consumed by the named peers (or `*`)."""

    service: str
    to: tuple[str, ...] = attrs.field(converter=lambda v: tuple(sorted(set(v))))

    def __attrs_post_init__(self) -> None:
        parse_service_key(self.service)
        if not self.to:
            raise ValidationError(f"export {self.service}: to: name at least one peer cluster or '*'")
        for peer in self.to:
            if peer != ANY_PEER:
                check_label("export.to", peer)

    def allows(self, peer: str) -> bool:
        return ANY_PEER in self.to or peer in self.to


@attrs.frozen
class Peer:
    """A remote cluster this cluster has linked: where its gateway and control plane are, and its trust bundle."""

    name: str = attrs.field(validator=_validate_label)
    region: str = attrs.field(validator=_validate_label)
    zones: tuple[str, ...] = attrs.field(converter=tuple)
    gateway: str  # host:port of its east-west listener
    control: str = ""  # host:port of its control-plane API, reached through its gateway
    trust_bundle_pem: str = ""

    def __attrs_post_init__(self) -> None:
        parse_host_port(f"peer {self.name}: gateway", self.gateway)


def _json_copy(value: Any) -> Any:
    """A plain-JSON deep copy (dicts, lists, strings, numbers, booleans, None); raises on anything else."""
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(f"policy: key {key!r} is not a string")
            out[key] = _json_copy(item)
        return out
    if isinstance(value, list | tuple):
        return [_json_copy(item) for item in value]
    if value is None or isinstance(value, str | bool | int | float):
        return value
    raise ValidationError(f"policy: {value!r} is not a JSON value")


@attrs.frozen
class Policy:
    """A service's failover policy as stored: the `[policies."<service>"]` table, plain JSON data.

    The registry does not interpret it (`gateway.lb.policy.ServicePolicy.from_mapping` does, and
    the writer validates with it first); `spec` is a private copy, read-only by convention.
    """

    service: str
    spec: Mapping[str, Any] = attrs.field(factory=dict, converter=_json_copy)

    def __attrs_post_init__(self) -> None:
        parse_service_key(self.service)
        if not isinstance(self.spec, dict):
            raise ValidationError(f"policy {self.service}: spec must be a table")


@attrs.frozen
class RouteRules:
    """A service's route rules as stored: the `[[routes."<service>"]]` list, plain JSON data.

    Interpreted and validated by `gateway.policy.RoutesConfig`; `rules` are private copies.
    """

    service: str
    rules: tuple[Mapping[str, Any], ...] = attrs.field(factory=tuple, converter=lambda v: tuple(_json_copy(list(v))))

    def __attrs_post_init__(self) -> None:
        parse_service_key(self.service)
        for index, rule in enumerate(self.rules):
            if not isinstance(rule, dict):
                raise ValidationError(f"routes {self.service}[{index}]: a rule must be a table")


@attrs.frozen
class Catalog:
    """The immutable snapshot, at a revision, of what one cluster's gateways need.

    Keys: services by `name.namespace`, endpoints by endpoint id, exports by service,
    peers by cluster name.
    """

    cluster: str
    revision: int = 0
    services: Mapping[str, Service] = attrs.field(factory=dict, converter=_frozen_mapping)
    endpoints: Mapping[str, Endpoint] = attrs.field(factory=dict, converter=_frozen_mapping)
    exports: Mapping[str, Export] = attrs.field(factory=dict, converter=_frozen_mapping)
    peers: Mapping[str, Peer] = attrs.field(factory=dict, converter=_frozen_mapping)
    # This cluster's own words, never imported from a peer: failover policies and route rules by service.
    policies: Mapping[str, Policy] = attrs.field(factory=dict, converter=_frozen_mapping)
    routes: Mapping[str, RouteRules] = attrs.field(factory=dict, converter=_frozen_mapping)

    def endpoints_of(self, service: str) -> tuple[Endpoint, ...]:
        return tuple(e for e in self.endpoints.values() if e.service == service)
