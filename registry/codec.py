"""JSON form of every catalog value: what backends store and what a catalog file holds.

Owns the encoding of `registry.model` values to plain JSON-ready dicts and back
(`<value>_to_dict` / `<value>_from_dict`), and of a whole `Catalog`
(`catalog_to_json` / `catalog_from_json`). Decoding is strict: a missing field, an
unknown field or a value of the wrong type is a `ValidationError` whose message names
the path of the field (`endpoints[3].port: ...`). Pure: imports neither trio nor
`gateway` nor `federation`.

A catalog document looks like::

    {"cluster": "east-1", "revision": 42,
     "services":  [{"name": "echo", "namespace": "demo", "protocol": "http", "ports": [8080]}],
     "endpoints": [{"service": "echo.demo", "cluster": "east-1", "address": "127.0.1.10",
                    "port": 8080, "locality": "us-east/us-east-1a"}],
     "exports":   [{"service": "echo.demo", "to": ["*"]}],
     "peers":     [{"name": "west-1", "region": "eu-west", "zones": ["eu-west-1a"],
                    "gateway": "127.0.3.1:15443"}],
     "policies":  [{"service": "echo.demo", "spec": {"failover": ["eu-west"]}}],
     "routes":    [{"service": "echo.demo", "rules": [{"name": "v2", "subset": {"version": "v2"}}]}]}

`policies` and `routes` are optional (written only when non-empty).

Lists are written; a mapping keyed by the value's own key (service key, endpoint id,
exported service, peer name) is accepted on reading too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from registry.errors import ValidationError
from registry.model import (
    Catalog,
    Cluster,
    Endpoint,
    Export,
    Health,
    Locality,
    Peer,
    Policy,
    RouteRules,
    Service,
)

T = TypeVar("T")

_LOCALITY_CACHE: dict[str, Locality] = {}


def _fields(path: str, data: object, required: tuple[str, ...], optional: tuple[str, ...]) -> Mapping[str, Any]:
    if data.__class__ is not dict and not isinstance(data, Mapping):
        raise ValidationError(f"{path}: expected an object, got {type(data).__name__}")
    spec = _ALLOWED.get((required, optional))
    if spec is None:
        spec = _ALLOWED[(required, optional)] = (frozenset(required), frozenset(required) | frozenset(optional))
    keys = data.keys()
    if keys >= spec[0] and keys <= spec[1]:
        return data  # the common case, checked with two set operations (decoding is on the hot path)
    for name in required:
        if name not in data:
            raise ValidationError(f"{path}.{name}: missing")
    unknown = sorted(set(keys) - spec[1])
    raise ValidationError(f"{path}.{unknown[0]}: unknown field")


_ALLOWED: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[frozenset[str], frozenset[str]]] = {}


def _typed(path: str, value: object, kind: type, what: str, field: str = "") -> Any:
    """`value` if it is a `kind`; else an error naming `path.field` (built only then: decoding is hot)."""
    if value.__class__ is kind or (isinstance(value, kind) and not isinstance(value, bool)):
        return value
    raise ValidationError(f"{path}.{field}: {value!r} is not {what}" if field else f"{path}: {value!r} is not {what}")


def _str_list(path: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ValidationError(f"{path}: {value!r} is not a list")
    return tuple(_typed(f"{path}[{i}]", v, str, "a string") for i, v in enumerate(value))


def _build(path: str, factory: Callable[..., T], **kwargs: Any) -> T:
    try:
        return factory(**kwargs)
    except ValidationError as exc:
        raise ValidationError(f"{path}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{path}: {exc}") from None


# -- Locality ------------------------------------------------------------------------------------


def locality_to_dict(value: Locality) -> dict[str, str]:
    return {"region": value.region, "zone": value.zone}


def locality_from_dict(data: object, path: str = "locality") -> Locality:
    """A `{"region", "zone"}` object or the text `region/zone`."""
    if isinstance(data, str):
        cached = _LOCALITY_CACHE.get(data)
        if cached is not None:
            return cached
        try:
            value = Locality.parse(data)
        except ValidationError as exc:
            raise ValidationError(f"{path}: {exc}") from None
        if len(_LOCALITY_CACHE) < 10_000:  # localities are few; share one object per locality
            _LOCALITY_CACHE[data] = value
        return value
    d = _fields(path, data, ("region", "zone"), ())
    return _build(path, Locality, region=d["region"], zone=d["zone"])


# -- Cluster -------------------------------------------------------------------------------------


def cluster_to_dict(value: Cluster) -> dict[str, Any]:
    return {"name": value.name, "region": value.region, "zones": list(value.zones)}


def cluster_from_dict(data: object, path: str = "cluster") -> Cluster:
    d = _fields(path, data, ("name", "region", "zones"), ())
    return _build(path, Cluster, name=d["name"], region=d["region"], zones=_str_list(f"{path}.zones", d["zones"]))


# -- Service -------------------------------------------------------------------------------------


def service_to_dict(value: Service) -> dict[str, Any]:
    return {
        "name": value.name,
        "namespace": value.namespace,
        "protocol": value.protocol,
        "ports": list(value.ports),
        "gateway_mode": value.gateway_mode,
    }


def service_from_dict(data: object, path: str = "service") -> Service:
    d = _fields(path, data, ("name", "namespace"), ("protocol", "ports", "gateway_mode"))
    ports = d.get("ports", [])
    if not isinstance(ports, list | tuple):
        raise ValidationError(f"{path}.ports: {ports!r} is not a list")
    return _build(
        path,
        Service,
        name=d["name"],
        namespace=d["namespace"],
        protocol=d.get("protocol", "http"),
        ports=tuple(ports),
        gateway_mode=d.get("gateway_mode", "http"),
    )


# -- Endpoint ------------------------------------------------------------------------------------

def _endpoint_locality(data: object, path: str) -> Locality:
    cached = _LOCALITY_CACHE.get(data) if isinstance(data, str) else None
    return cached if cached is not None else locality_from_dict(data, f"{path}.locality")


_NO_LABELS: dict[str, str] = {}
_ENDPOINT_REQUIRED = ("service", "cluster", "address", "port", "locality")
_ENDPOINT_OPTIONAL = ("id", "weight", "labels", "health")


def endpoint_to_dict(value: Endpoint) -> dict[str, Any]:
    """Fields at their default (id from cluster/address:port, weight 1, no labels, healthy) are left out:
    a catalog holds 100,000 of these, and every watcher parses them all."""
    out: dict[str, Any] = {
        "service": value.service,
        "cluster": value.cluster,
        "address": value.address,
        "port": value.port,
        "locality": f"{value.locality.region}/{value.locality.zone}",
    }
    if value.id != f"{value.cluster}/{value.address}:{value.port}":
        out["id"] = value.id
    if value.weight != 1:
        out["weight"] = value.weight
    if value.labels:
        out["labels"] = dict(value.labels)
    if value.health is not Health.HEALTHY:
        out["health"] = value.health.value
    return out


def endpoint_from_dict(data: object, path: str = "endpoint") -> Endpoint:
    d = _fields(path, data, _ENDPOINT_REQUIRED, _ENDPOINT_OPTIONAL)
    get = d.get
    labels = get("labels", _NO_LABELS)
    if labels.__class__ is not dict and not isinstance(labels, Mapping):
        raise ValidationError(f"{path}.labels: {labels!r} is not an object")
    service = d["service"]
    if service.__class__ is not str:
        _typed(path, service, str, "name.namespace", "service")
    ident = get("id", "")
    if ident.__class__ is not str:
        _typed(path, ident, str, "a string", "id")
    locality = d["locality"]
    locality = (_LOCALITY_CACHE.get(locality) if locality.__class__ is str else None) or _endpoint_locality(locality, path)
    try:  # positional: this runs 100,000 times when a watcher first reads a large catalog
        return Endpoint(
            service,
            d["cluster"],
            d["address"],
            d["port"],
            locality,
            get("weight", 1),
            labels,
            get("health", "healthy"),
            ident,
        )
    except (ValidationError, TypeError, ValueError) as exc:
        raise ValidationError(f"{path}: {exc}") from None


# -- Export --------------------------------------------------------------------------------------


def export_to_dict(value: Export) -> dict[str, Any]:
    return {"service": value.service, "to": list(value.to)}


def export_from_dict(data: object, path: str = "export") -> Export:
    d = _fields(path, data, ("service", "to"), ())
    return _build(
        path,
        Export,
        service=_typed(path, d["service"], str, "name.namespace", "service"),
        to=_str_list(f"{path}.to", d["to"]),
    )


# -- Peer ----------------------------------------------------------------------------------------


def peer_to_dict(value: Peer) -> dict[str, Any]:
    return {
        "name": value.name,
        "region": value.region,
        "zones": list(value.zones),
        "gateway": value.gateway,
        "control": value.control,
        "trust_bundle_pem": value.trust_bundle_pem,
    }


def peer_from_dict(data: object, path: str = "peer") -> Peer:
    d = _fields(path, data, ("name", "region", "zones", "gateway"), ("control", "trust_bundle_pem"))
    return _build(
        path,
        Peer,
        name=d["name"],
        region=d["region"],
        zones=_str_list(f"{path}.zones", d["zones"]),
        gateway=_typed(path, d["gateway"], str, "host:port", "gateway"),
        control=_typed(path, d.get("control", ""), str, "host:port", "control"),
        trust_bundle_pem=_typed(path, d.get("trust_bundle_pem", ""), str, "PEM text", "trust_bundle_pem"),
    )


def policy_to_dict(value: Policy) -> dict[str, Any]:
    return {"service": value.service, "spec": _thaw(value.spec)}


def policy_from_dict(data: object, path: str = "policy") -> Policy:
    d = _fields(path, data, ("service", "spec"), ())
    service = _typed(path, d["service"], str, "a service key", "service")
    spec = d["spec"]
    if not isinstance(spec, Mapping):
        raise ValidationError(f"{path}.spec: expected an object, got {type(spec).__name__}")
    return _build(path, Policy, service=service, spec=spec)


def routes_to_dict(value: RouteRules) -> dict[str, Any]:
    return {"service": value.service, "rules": [_thaw(rule) for rule in value.rules]}


def routes_from_dict(data: object, path: str = "routes") -> RouteRules:
    d = _fields(path, data, ("service", "rules"), ())
    service = _typed(path, d["service"], str, "a service key", "service")
    rules = d["rules"]
    if not isinstance(rules, list):
        raise ValidationError(f"{path}.rules: expected a list, got {type(rules).__name__}")
    return _build(path, RouteRules, service=service, rules=rules)


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_thaw(v) for v in value]
    return value


# -- Catalog -------------------------------------------------------------------------------------


def _collection(
    path: str, data: object, decode: Callable[[object, str], T], key_of: Callable[[T], str]
) -> dict[str, T]:
    out: dict[str, T] = {}
    if isinstance(data, Mapping):
        for key, item in data.items():
            value = decode(item, f"{path}[{key!r}]")
            if key_of(value) != key:
                raise ValidationError(f"{path}[{key!r}]: key does not match the value's own key {key_of(value)!r}")
            out[key] = value
        return out
    if not isinstance(data, list | tuple):
        raise ValidationError(f"{path}: expected a list, got {type(data).__name__}")
    for i, item in enumerate(data):
        value = decode(item, f"{path}[{i}]")
        key = key_of(value)
        if key in out:
            raise ValidationError(f"{path}[{i}]: duplicate {key!r}")
        out[key] = value
    return out


def catalog_to_json(catalog: Catalog) -> dict[str, Any]:
    """A JSON-ready dict; collections are lists sorted by key (stable output for files and diffs)."""
    out = {
        "cluster": catalog.cluster,
        "revision": catalog.revision,
        "services": [service_to_dict(catalog.services[k]) for k in sorted(catalog.services)],
        "endpoints": [endpoint_to_dict(catalog.endpoints[k]) for k in sorted(catalog.endpoints)],
        "exports": [export_to_dict(catalog.exports[k]) for k in sorted(catalog.exports)],
        "peers": [peer_to_dict(catalog.peers[k]) for k in sorted(catalog.peers)],
    }
    # Written only when present, so catalogs without them read the same as before they existed.
    if catalog.policies:
        out["policies"] = [policy_to_dict(catalog.policies[k]) for k in sorted(catalog.policies)]
    if catalog.routes:
        out["routes"] = [routes_to_dict(catalog.routes[k]) for k in sorted(catalog.routes)]
    return out


def catalog_from_json(data: object, path: str = "catalog") -> Catalog:
    d = _fields(path, data, ("cluster",), ("revision", "services", "endpoints", "exports", "peers", "policies", "routes"))
    cluster = _typed(path, d["cluster"], str, "a cluster name", "cluster")
    revision = _typed(path, d.get("revision", 0), int, "a revision number", "revision")
    if revision < 0:
        raise ValidationError(f"{path}.revision: {revision!r} is negative")
    return Catalog(
        cluster=cluster,
        revision=revision,
        services=_collection(f"{path}.services", d.get("services", []), service_from_dict, lambda s: s.key),
        endpoints=_collection(f"{path}.endpoints", d.get("endpoints", []), endpoint_from_dict, lambda e: e.id),
        exports=_collection(f"{path}.exports", d.get("exports", []), export_from_dict, lambda e: e.service),
        peers=_collection(f"{path}.peers", d.get("peers", []), peer_from_dict, lambda p: p.name),
        policies=_collection(f"{path}.policies", d.get("policies", []), policy_from_dict, lambda p: p.service),
        routes=_collection(f"{path}.routes", d.get("routes", []), routes_from_dict, lambda r: r.service),
    )


def dumps(value: dict[str, Any]) -> bytes:
    """Compact, key-sorted JSON bytes (what backends store)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


_DECODER = json.JSONDecoder()


def loads(data: bytes | str, path: str = "value") -> Any:
    try:
        return _DECODER.decode(data.decode() if isinstance(data, bytes | bytearray) else data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"{path}: not valid JSON: {exc}") from None


def read_catalog_file(path: str) -> Catalog:
    """A catalog document from a file; errors name the file and the field."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ValidationError(f"{path}: cannot read: {exc.strerror}") from None
    return catalog_from_json(loads(raw, path), f"{path}: catalog")
