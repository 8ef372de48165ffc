"""One cluster's config: a TOML file read into frozen attrs values.

Example (`east-1.toml`)::

    trust_domain = "mesh.example"

    [cluster]
    name = "east-1"
    region = "us-east"
    zones = ["us-east-1a", "us-east-1b"]

    [pki]
    dir = "pki"                 # relative paths are relative to this file

    [registry]
    url = "sqlite:///data/east-1/registry.db"   # default: <data_dir>/registry.db

    [gateway]
    eastwest = "127.0.1.1:15443"
    outbound = "127.0.1.1:15001"
    admin = "127.0.1.1:15000"

    [control]
    api = "127.0.1.1:15010"
    federation = "127.0.1.1:15011"   # mTLS crossing for peers; default: the api port + 1

Errors are `ConfigError` naming the file and the field (`east-1.toml: cluster.name: ...`).
Sections owned by later capabilities (policies, routes, peers) are parsed by their own
modules from `ClusterConfig.raw`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from federation.errors import ConfigError
from registry.errors import ValidationError
from registry.model import Cluster, check_label, parse_host_port

DEFAULT_TRUST_DOMAIN = "mesh.example"


def _section(raw: Mapping[str, Any], name: str, source: str) -> Mapping[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: [{name}] must be a table")
    return value


def _address(section: Mapping[str, Any], key: str, field: str, default: str) -> str:
    value = section.get(key, default)
    parse_host_port(field, value)
    return value


def _next_port(address: str) -> str:
    host, _, port = address.rpartition(":")
    return f"{host}:{int(port) + 1}"


@attrs.frozen
class ClusterConfig:
    path: Path | None
    trust_domain: str
    cluster: Cluster
    data_dir: Path
    pki_dir: Path
    registry_url: str
    eastwest: str
    outbound: str
    admin: str
    control_api: str
    control_federation: str
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False)

    @classmethod
    def from_toml(cls, path: str | Path) -> ClusterConfig:
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        return cls.from_mapping(raw, source=str(path), base_dir=path.parent.resolve(), path=path)

    @classmethod
    def from_mapping(
        cls,
        raw: Mapping[str, Any],
        *,
        source: str = "<config>",
        base_dir: Path | None = None,
        path: Path | None = None,
    ) -> ClusterConfig:
        base_dir = base_dir or Path.cwd()
        try:
            trust_domain = raw.get("trust_domain", DEFAULT_TRUST_DOMAIN)
            if not isinstance(trust_domain, str) or not trust_domain:
                raise ValidationError(f"trust_domain: {trust_domain!r} is not a trust domain")
            c = _section(raw, "cluster", source)
            if "name" not in c:
                raise ValidationError("cluster.name: missing")
            name = check_label("cluster.name", c["name"])
            zones = c.get("zones", [c["zone"]] if "zone" in c else None)
            if not isinstance(zones, list) or not zones:
                raise ValidationError("cluster.zones: a list of at least one zone is needed")
            cluster = Cluster(name=name, region=c.get("region", ""), zones=tuple(zones))
            data_dir = base_dir / c.get("data_dir", f"data/{name}")
            pki_dir = base_dir / _section(raw, "pki", source).get("dir", "pki")
            registry_url = _section(raw, "registry", source).get("url", f"sqlite:///{data_dir / 'registry.db'}")
            gw = _section(raw, "gateway", source)
            control = _section(raw, "control", source)
            return cls(
                path=path,
                trust_domain=trust_domain,
                cluster=cluster,
                data_dir=data_dir,
                pki_dir=pki_dir,
                registry_url=registry_url,
                eastwest=_address(gw, "eastwest", "gateway.eastwest", "127.0.0.1:15443"),
                outbound=_address(gw, "outbound", "gateway.outbound", "127.0.0.1:15001"),
                admin=_address(gw, "admin", "gateway.admin", "127.0.0.1:15000"),
                control_api=(api := _address(control, "api", "control.api", "127.0.0.1:15010")),
                control_federation=_address(control, "federation", "control.federation", _next_port(api)),
                raw=raw,
            )
        except ValidationError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        except (TypeError, KeyError) as exc:
            raise ConfigError(f"{source}: {exc}") from None
