"""One gateway's configuration: frozen, validated attrs values with units in their names.

Owns `GatewayConfig` (cluster, locality, listener addresses, TLS material, outbound TCP port
map, authority aliases, timeouts, catalog file, the control-plane API federation calls go to) and `GatewayConfig.from_mapping()`, which reads a
cluster config's `[gateway]` table; and `TracingConfig` / `tracing_options()`, the `[tracing]` table
(span export over OTLP, `gateway.otlp`). Errors are `gateway.errors.ConfigInvalid` naming the field.

Pure: imports neither trio nor `federation` (the command line builds this from its cluster config).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import attrs

from gateway.errors import ConfigInvalid
from registry.errors import ValidationError
from registry.model import Locality, check_label, parse_host_port, parse_service_key

# The largest header block the gateway accepts on either protocol (431 / GOAWAY beyond it).
DEFAULT_MAX_HEADER_BYTES = 64 * 1024


def split_address(field: str, value: object) -> tuple[str, int]:
    """`host:port` into its parts; port 0 means "any free port" (the bound one is reported)."""
    if isinstance(value, str) and value.endswith(":0"):
        value = value[:-1] + "1"
        host, _ = _split(field, value)
        return host, 0
    return _split(field, value)


def _split(field: str, value: object) -> tuple[str, int]:
    try:
        return parse_host_port(field, value)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigInvalid(str(exc)) from None


def _address(field: str, value: object) -> str:
    split_address(field, value)
    return value  # type: ignore[return-value]


def _loopback(field: str, value: str) -> None:
    host, _ = split_address(field, value)
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        if host == "localhost":
            return
    raise ConfigInvalid(f"{field}: {value!r} must be a loopback address (it serves local workloads only)")


def _positive_seconds_in(table: str) -> Any:
    """An attrs validator for a positive, finite number of seconds in `[table]`."""

    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise ConfigInvalid(f"{table}.{attribute.name}: {value!r} is not a positive number of seconds")

    return check


_positive_seconds = _positive_seconds_in("gateway")


def _positive_int(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigInvalid(f"gateway.{attribute.name}: {value!r} is not a positive integer")


def _tcp_ports(value: Mapping[Any, Any] | None) -> Mapping[int, str]:
    out: dict[int, str] = {}
    for port, service in dict(value or {}).items():
        try:
            number = int(port)
        except (TypeError, ValueError):
            raise ConfigInvalid(f"gateway.tcp_ports: {port!r} is not a port number") from None
        if not 1 <= number <= 65535:
            raise ConfigInvalid(f"gateway.tcp_ports: {port!r} is not a port number (1-65535)")
        try:
            parse_service_key(service)
        except ValidationError as exc:
            raise ConfigInvalid(f"gateway.tcp_ports.{port}: {exc}") from None
        out[number] = service
    return MappingProxyType(out)


def _suffixes(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    out = []
    for suffix in value:
        if not isinstance(suffix, str) or not suffix or suffix.startswith(".") or suffix != suffix.lower():
            raise ConfigInvalid(f"gateway.alias_suffixes: {suffix!r} is not a lower-case DNS suffix")
        out.append(suffix)
    return tuple(out)


@attrs.frozen
class GatewayConfig:
    """Everything one gateway process needs besides its catalog.

    `identity`/`bundle` are `certs.store` values; `contexts` (anything with `.server` and
    `.client` `ssl.SSLContext` attributes, such as `certs.rotation.ContextHolder`) wins when given,
    so rotation can swap contexts under a running gateway.
    """

    cluster: str = attrs.field()
    locality: Locality
    trust_domain: str = "mesh.example"
    eastwest: str = attrs.field(default="127.0.0.1:15443")
    outbound: str = attrs.field(default="127.0.0.1:15001")
    admin: str = attrs.field(default="127.0.0.1:15000")
    identity: Any = None
    bundle: Any = None
    contexts: Any = None
    tcp_ports: Mapping[int, str] = attrs.field(factory=dict, converter=_tcp_ports)
    # `name.namespace.<suffix>` resolves like `name.namespace` (default: the trust domain).
    alias_suffixes: tuple[str, ...] | None = attrs.field(default=None)
    catalog_file: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    catalog_poll_interval_s: float = attrs.field(default=1.0, validator=_positive_seconds)
    connect_timeout_s: float = attrs.field(default=2.0, validator=_positive_seconds)
    # From the request's last byte sent upstream to the response's headers.
    request_timeout_s: float = attrs.field(default=30.0, validator=_positive_seconds)
    # A connection (downstream or upstream) with no byte in either direction for this long is closed.
    idle_timeout_s: float = attrs.field(default=60.0, validator=_positive_seconds)
    # Time allowed for a request's head to arrive once its first byte has (slowloris guard).
    header_timeout_s: float = attrs.field(default=10.0, validator=_positive_seconds)
    handshake_timeout_s: float = attrs.field(default=5.0, validator=_positive_seconds)
    drain_timeout_s: float = attrs.field(default=10.0, validator=_positive_seconds)
    max_header_bytes: int = attrs.field(default=DEFAULT_MAX_HEADER_BYTES, validator=_positive_int)
    max_concurrent_streams: int = attrs.field(default=256, validator=_positive_int)
    reuse_port: bool = False
    # The local address outgoing connections bind (None: the east-west listener's host when it is a
    # specific loopback address other than 127.0.0.1, else any; `gateway.net.source_address_of`).
    source_address: str | None = attrs.field(default=None)
    # This cluster's control-plane API (loopback): federation calls from peers (authority
    # `federation.isthmus`, `gateway.federation_route`) are forwarded there with the verified
    # identity and the secret read from `forward_secret_file`. None: such calls get 404.
    control_api: str | None = attrs.field(default=None)
    forward_secret_file: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))

    @source_address.validator
    def _check_source_address(self, attribute: attrs.Attribute, value: Any) -> None:
        if value is None:
            return
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ConfigInvalid(f"gateway.source_address: {value!r} is not an IP address") from None

    @cluster.validator
    def _check_cluster(self, attribute: attrs.Attribute, value: Any) -> None:
        try:
            check_label("gateway.cluster", value)
        except ValidationError as exc:
            raise ConfigInvalid(str(exc)) from None

    @eastwest.validator
    def _check_eastwest(self, attribute: attrs.Attribute, value: Any) -> None:
        _address("gateway.eastwest", value)

    @outbound.validator
    def _check_outbound(self, attribute: attrs.Attribute, value: Any) -> None:
        _loopback("gateway.outbound", _address("gateway.outbound", value))

    @admin.validator
    def _check_admin(self, attribute: attrs.Attribute, value: Any) -> None:
        _loopback("gateway.admin", _address("gateway.admin", value))

    @control_api.validator
    def _check_control_api(self, attribute: attrs.Attribute, value: Any) -> None:
        if value is not None:
            _loopback("gateway.control_api", _address("gateway.control_api", value))

    def __attrs_post_init__(self) -> None:
        if self.alias_suffixes is None:
            object.__setattr__(self, "alias_suffixes", (self.trust_domain,))
        else:
            object.__setattr__(self, "alias_suffixes", _suffixes(self.alias_suffixes))
        if self.contexts is None and (self.identity is None or self.bundle is None):
            raise ConfigInvalid("gateway: an identity and a trust bundle (or TLS contexts) are needed")

    @property
    def eastwest_address(self) -> tuple[str, int]:
        return split_address("gateway.eastwest", self.eastwest)

    @property
    def outbound_address(self) -> tuple[str, int]:
        return split_address("gateway.outbound", self.outbound)

    @property
    def admin_address(self) -> tuple[str, int]:
        return split_address("gateway.admin", self.admin)

    @classmethod
    def from_mapping(
        cls,
        section: Mapping[str, Any],
        *,
        cluster: str,
        locality: Locality,
        trust_domain: str,
        base_dir: Path | None = None,
        **overrides: Any,
    ) -> GatewayConfig:
        """Build from a cluster config's `[gateway]` table (TOML shape)::

            [gateway]
            eastwest = "127.0.1.1:15443"
            outbound = "127.0.1.1:15001"
            admin = "127.0.1.1:15000"
            catalog_file = "catalog.json"      # relative to the config file
            tcp_ports = { "15006" = "db.shop" }
            alias_suffixes = ["mesh.example"]
            connect_timeout_s = 2.0

        `overrides` (identity, bundle, contexts, catalog_file, reuse_port, ...) win over the table.
        """
        if not isinstance(section, Mapping):
            raise ConfigInvalid("gateway: [gateway] must be a table")
        known = {f.name for f in attrs.fields(cls)} - {"cluster", "locality", "trust_domain", "identity",
                                                        "bundle", "contexts"}
        kwargs: dict[str, Any] = {}
        for key, value in section.items():
            if key not in known:
                raise ConfigInvalid(f"gateway.{key}: unknown setting (known: {', '.join(sorted(known))})")
            kwargs[key] = value
        if "catalog_file" in kwargs:
            if not isinstance(kwargs["catalog_file"], str) or not kwargs["catalog_file"]:
                raise ConfigInvalid(f"gateway.catalog_file: {kwargs['catalog_file']!r} is not a path")
            kwargs["catalog_file"] = (base_dir or Path.cwd()) / kwargs["catalog_file"]
        if "forward_secret_file" in kwargs:
            if not isinstance(kwargs["forward_secret_file"], str) or not kwargs["forward_secret_file"]:
                raise ConfigInvalid(f"gateway.forward_secret_file: {kwargs['forward_secret_file']!r} is not a path")
            kwargs["forward_secret_file"] = (base_dir or Path.cwd()) / kwargs["forward_secret_file"]
        if "tcp_ports" in kwargs and not isinstance(kwargs["tcp_ports"], Mapping):
            raise ConfigInvalid("gateway.tcp_ports: must be a table of port = \"name.namespace\"")
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(cluster=cluster, locality=locality, trust_domain=trust_domain, **kwargs)
        except TypeError as exc:
            raise ConfigInvalid(f"gateway: {exc}") from None


# -- [tracing]: span export over OTLP/HTTP (`gateway.otlp`) ------------------------------------------

TRACING_KEYS = ("enabled", "otlp_endpoint", "service_name", "sample_ratio", "headers", "export_timeout_s",
                "flush_interval_s")
_HEADER_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _otlp_endpoint(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value) if isinstance(value, str) else None
        port_ok = parts is not None and (parts.port is None or parts.port > 0)
    except ValueError:
        parts, port_ok = None, False
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ConfigInvalid(f"tracing.otlp_endpoint: {value!r} is not an http:// or https:// URL")


def _sample_ratio(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigInvalid(f"tracing.sample_ratio: {value!r} is not a number in [0, 1]")
    return float(value)


_tracing_seconds = _positive_seconds_in("tracing")


def _tracing_headers(value: Any) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigInvalid("tracing.headers: must be a table of header = \"value\"")
    out: dict[str, str] = {}
    for name, text in value.items():
        if not isinstance(name, str) or not name or not set(name) <= _HEADER_TOKEN:
            raise ConfigInvalid(f"tracing.headers: {name!r} is not a valid header name")
        if not isinstance(text, str) or any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in text):
            raise ConfigInvalid(f"tracing.headers.{name}: {text!r} is not a header value")
        out[name.lower()] = text
    return MappingProxyType(out)


@attrs.frozen
class TracingConfig:
    """The `[tracing]` table: where and how much this gateway exports spans (`gateway.otlp`)::

        [tracing]
        otlp_endpoint = "http://127.0.0.1:4318"   # OTLP/HTTP; /v1/traces is added to a bare base URL
        service_name = "isthmus-east-1"           # default: isthmus-<cluster>
        sample_ratio = 1.0                        # share of the traces this gateway starts
        headers = { authorization = "Bearer ..." }
        export_timeout_s = 10.0
        flush_interval_s = 5.0

    A request that arrives with a `traceparent` keeps its sampled flag (a parent-based decision, as
    Envoy and the OpenTelemetry SDK make it); `sample_ratio` decides the flag of the traces this
    gateway starts.
    """

    otlp_endpoint: str = attrs.field(default="http://127.0.0.1:4318", validator=_otlp_endpoint)
    service_name: str | None = attrs.field(default=None)
    sample_ratio: float = attrs.field(default=1.0, converter=_sample_ratio)
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_tracing_headers)
    export_timeout_s: float = attrs.field(default=10.0, validator=_tracing_seconds)
    flush_interval_s: float = attrs.field(default=5.0, validator=_tracing_seconds)

    @service_name.validator
    def _check_service_name(self, attribute: attrs.Attribute, value: Any) -> None:
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigInvalid(f"tracing.service_name: {value!r} is not a non-empty string")

    @property
    def traces_url(self) -> str:
        """The full OTLP/HTTP traces URL: `/v1/traces` added unless the endpoint already ends with it."""
        url = self.otlp_endpoint
        if url.rstrip("/").endswith("/v1/traces"):
            return url
        return url.rstrip("/") + "/v1/traces"

    @classmethod
    def from_mapping(cls, section: Any) -> TracingConfig | None:
        """The config of a `[tracing]` table, or None when it says `enabled = false`."""
        if not isinstance(section, Mapping):
            raise ConfigInvalid("tracing: [tracing] must be a table")
        unknown = sorted(str(key) for key in set(section) - set(TRACING_KEYS))
        if unknown:
            raise ConfigInvalid(f"tracing.{unknown[0]}: unknown setting (known: {', '.join(TRACING_KEYS)})")
        kwargs = dict(section)
        enabled = kwargs.pop("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigInvalid(f"tracing.enabled: {enabled!r} is not true or false")
        config = cls(**kwargs)
        return config if enabled else None


def tracing_options(raw: Mapping[str, Any]) -> TracingConfig | None:
    """A cluster config's `[tracing]` table, or None when it is absent (span export is off by default)."""
    section = raw.get("tracing")
    return None if section is None else TracingConfig.from_mapping(section)
