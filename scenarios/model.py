"""Scenario files: a topology, a load, a timeline of faults and the SLOs they must hold (pure, validated).

```toml
name = "zone-outage"
description = "every echo.demo endpoint in us-east-1a dies; traffic must move to us-east-1b"
duration_s = 20

[topology]
demo = true                 # the demo topology (clusters east-1, east-2, west-1)
clusters = ["east-1", "east-2", "west-1"]   # optional: a subset of the demo's clusters (default: all)

[load]
from_cluster = "east-1"
service = "echo.demo"
rate_per_s = 100
concurrency = 16
grpc_share = 0.0            # fraction of requests sent as gRPC to greeter.demo
idempotent_share = 1.0      # fraction of GETs; the rest are POSTs (not retried)

[[faults]]
kind = "stop-endpoints"
at_s = 5
until_s = 12                # restore at 12 s (omit: never restored during the drill)
cluster = "east-1"
zone = "us-east-1a"

[slo]
min_success_ratio = 0.999
max_idempotent_failures = 0
max_time_to_failover_s = 1.0
max_time_to_return_s = 5.0
max_p99_during_fault_ms = 250
```
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from scenarios.errors import ScenarioInvalid

DEMO_CLUSTERS = {"east-1": ("us-east", ("us-east-1a", "us-east-1b")), "east-2": ("us-east", ("us-east-1c",)),
                 "west-1": ("eu-west", ("eu-west-1a",))}

# kind -> (required fields, optional fields)
FAULT_KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "stop-endpoints": (("cluster",), ("zone", "service")),
    "kill-gateway": (("cluster",), ()),
    "stop-region": (("region",), ()),
    "partition": (("cluster", "peer"), ()),
    "link-latency": (("cluster", "peer", "latency_ms"), ()),
    "link-loss": (("cluster", "peer", "loss_percent"), ()),
    "registry-down": (("cluster",), ()),
    "control-restart": (("cluster",), ()),
    "cert-rotation": (("cluster",), ()),
    "cert-expired": (("cluster",), ()),
    "brownout": (("cluster", "zone", "delay_ms"), ("fraction",)),
    "flapping": (("cluster", "zone", "period_s"), ()),
}
COMMON_FAULT_FIELDS = ("kind", "at_s", "until_s")
# Numeric fault parameters and their accepted ranges (inclusive).
FAULT_NUMBERS: dict[str, tuple[float, float]] = {
    "latency_ms": (1, 10_000),
    "loss_percent": (0.1, 100),
    "delay_ms": (1, 60_000),
    "fraction": (0.01, 1),
    "period_s": (0.1, 600),
}


@attrs.frozen
class Load:
    from_cluster: str
    service: str
    rate_per_s: float = 100.0
    concurrency: int = 16
    grpc_share: float = 0.0
    idempotent_share: float = 1.0
    timeout_s: float = 5.0


@attrs.frozen
class Fault:
    kind: str
    at_s: float
    until_s: float | None
    params: Mapping[str, Any]


@attrs.frozen
class Slo:
    min_success_ratio: float | None = None
    max_idempotent_failures: int | None = None
    max_time_to_failover_s: float | None = None
    max_time_to_return_s: float | None = None
    max_p99_during_fault_ms: float | None = None


@attrs.frozen
class Scenario:
    name: str
    description: str
    duration_s: float
    clusters: Mapping[str, tuple[str, tuple[str, ...]]]
    load: Load
    faults: tuple[Fault, ...]
    slo: Slo
    path: Path | None = None

    @classmethod
    def from_toml(cls, path: str | Path) -> Scenario:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ScenarioInvalid(f"{path}: no such scenario file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ScenarioInvalid(f"{path}: not valid TOML: {exc}") from None
        return cls.from_mapping(raw, source=str(path), path=path)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], *, source: str = "<scenario>", path: Path | None = None) -> Scenario:
        def fail(field: str, why: str) -> ScenarioInvalid:
            return ScenarioInvalid(f"{source}: {field}: {why}")

        def number(table: Mapping[str, Any], key: str, field: str, *, default: Any = None, low: float = 0.0,
                   high: float = float("inf")) -> Any:
            value = table.get(key, default)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                raise fail(field, f"{value!r} is not a number in [{low}, {high}]")
            return value

        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise fail("name", "missing")
        duration = number(raw, "duration_s", "duration_s", low=1, high=3600)
        if duration is None:
            raise fail("duration_s", "missing")
        topology = raw.get("topology", {"demo": True})
        if not isinstance(topology, Mapping):
            raise fail("topology", "not a table")
        unknown = set(topology) - {"demo", "clusters"}
        if unknown:
            raise fail("topology", f"unknown field(s) {', '.join(sorted(unknown))}")
        if topology.get("demo", True) is not True:
            raise fail("topology", "only the demo topology (demo = true) is supported")
        names = topology.get("clusters", list(DEMO_CLUSTERS))
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise fail("topology.clusters", "not a non-empty list of cluster names")
        for cluster_name in names:
            if cluster_name not in DEMO_CLUSTERS:
                raise fail("topology.clusters", f"{cluster_name!r} is not a cluster of the demo topology "
                                                f"({', '.join(DEMO_CLUSTERS)})")
        clusters = {n: DEMO_CLUSTERS[n] for n in DEMO_CLUSTERS if n in names}
        regions = {region for region, _ in clusters.values()}

        load_raw = raw.get("load")
        if not isinstance(load_raw, Mapping):
            raise fail("load", "missing table")
        unknown = set(load_raw) - {f.name for f in attrs.fields(Load)}
        if unknown:
            raise fail("load", f"unknown field(s) {', '.join(sorted(unknown))}")
        if load_raw.get("from_cluster") not in clusters:
            raise fail("load.from_cluster", f"{load_raw.get('from_cluster')!r} is not a cluster of the topology ({', '.join(clusters)})")
        if not isinstance(load_raw.get("service"), str) or "." not in load_raw.get("service", ""):
            raise fail("load.service", "missing or not name.namespace")
        load = Load(
            from_cluster=load_raw["from_cluster"],
            service=load_raw["service"],
            rate_per_s=number(load_raw, "rate_per_s", "load.rate_per_s", default=100.0, low=1, high=5000),
            concurrency=int(number(load_raw, "concurrency", "load.concurrency", default=16, low=1, high=1000)),
            grpc_share=number(load_raw, "grpc_share", "load.grpc_share", default=0.0, high=1),
            idempotent_share=number(load_raw, "idempotent_share", "load.idempotent_share", default=1.0, high=1),
            timeout_s=number(load_raw, "timeout_s", "load.timeout_s", default=5.0, low=0.01, high=60),
        )

        faults = []
        for index, f in enumerate(raw.get("faults", [])):
            field = f"faults[{index}]"
            kind = f.get("kind")
            if kind not in FAULT_KINDS:
                raise fail(f"{field}.kind", f"unknown fault {kind!r} (known: {', '.join(FAULT_KINDS)})")
            required, optional = FAULT_KINDS[kind]
            for key in required:
                if key not in f:
                    raise fail(field, f"{kind} needs {key}")
            unknown = set(f) - set(required) - set(optional) - set(COMMON_FAULT_FIELDS)
            if unknown:
                raise fail(field, f"{kind} does not take {', '.join(sorted(unknown))}")
            at = number(f, "at_s", f"{field}.at_s", default=None, high=duration)
            if at is None:
                raise fail(f"{field}.at_s", f"missing (a time within the drill's {duration} s)")
            until = number(f, "until_s", f"{field}.until_s", default=None, high=duration)
            if until is not None and until <= at:
                raise fail(f"{field}.until_s", f"{until} is not after at_s {at}")
            for key in ("cluster", "peer"):
                if key in f and f[key] not in clusters:
                    raise fail(f"{field}.{key}", f"{f[key]!r} is not a cluster of the topology ({', '.join(clusters)})")
            if "zone" in f and f["zone"] not in clusters[f["cluster"]][1]:
                raise fail(f"{field}.zone", f"{f['zone']!r} is not a zone of {f['cluster']}")
            for key, (low, high) in FAULT_NUMBERS.items():
                if key in f:
                    number(f, key, f"{field}.{key}", low=low, high=high)
            if "peer" in f and f["peer"] == f.get("cluster"):
                raise fail(f"{field}.peer", f"{f['peer']!r} is the cluster itself (a link joins two clusters)")
            if "region" in f and f["region"] not in regions:
                raise fail(f"{field}.region", f"{f['region']!r} is not a region of the topology")
            params = {k: v for k, v in f.items() if k not in COMMON_FAULT_FIELDS}
            faults.append(Fault(kind=kind, at_s=at, until_s=until, params=params))

        slo_raw = raw.get("slo", {})
        unknown = set(slo_raw) - {f.name for f in attrs.fields(Slo)}
        if unknown:
            raise fail("slo", f"unknown SLO(s) {', '.join(sorted(unknown))}")
        slo = Slo(
            min_success_ratio=number(slo_raw, "min_success_ratio", "slo.min_success_ratio", high=1),
            max_idempotent_failures=number(slo_raw, "max_idempotent_failures", "slo.max_idempotent_failures"),
            max_time_to_failover_s=number(slo_raw, "max_time_to_failover_s", "slo.max_time_to_failover_s"),
            max_time_to_return_s=number(slo_raw, "max_time_to_return_s", "slo.max_time_to_return_s"),
            max_p99_during_fault_ms=number(slo_raw, "max_p99_during_fault_ms", "slo.max_p99_during_fault_ms"),
        )
        return cls(
            name=name, description=str(raw.get("description", "")), duration_s=duration, clusters=clusters,
            load=load, faults=tuple(sorted(faults, key=lambda x: x.at_s)), slo=slo, path=path,
        )
