"""Plan-time validation of the provider's attributes (pure: standard library only).

Owns the demo topology as the provider sees it (which clusters exist, in which region and zones)
and the name rules of Isthmus (DNS-1123 labels, `name.namespace` services, `*` for every peer).
Each check returns a list of `Problem`s; the resources turn them into Terraform diagnostics.
Must not import `tf`, `isthmus` or anything outside the standard library, so that the project's
own test environment can check this table against `federation.demo.topology`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

# (cluster, region, zones): the same table as federation.demo.topology.CLUSTERS, which a test compares.
DEMO_CLUSTERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("east-1", "us-east", ("us-east-1a", "us-east-1b")),
    ("east-2", "us-east", ("us-east-1c",)),
    ("west-1", "eu-west", ("eu-west-1a",)),
)
CLUSTER_NAMES = tuple(name for name, _, _ in DEMO_CLUSTERS)
REGIONS = tuple(dict.fromkeys(region for _, region, _ in DEMO_CLUSTERS))
BACKENDS = ("sqlite", "etcd")
ANY_PEER = "*"

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class Problem:
    """One invalid attribute: `summary` is the one line Terraform shows, `attribute` where it points."""

    attribute: str
    summary: str
    detail: str = ""


def is_set(value: Any) -> bool:
    """A value Terraform already knows at validation time (not null, not unknown until apply)."""
    return value is not None and isinstance(value, (str, int, float, list, tuple))


def region_of(cluster: str) -> str:
    return next(region for name, region, _ in DEMO_CLUSTERS if name == cluster)


def zones_of(cluster: str) -> list[str]:
    return next(list(zones) for name, _, zones in DEMO_CLUSTERS if name == cluster)


def check_label(attribute: str, value: Any, what: str) -> list[Problem]:
    if not isinstance(value, str) or not DNS1123_LABEL.match(value):
        return [
            Problem(
                attribute,
                f"{attribute}: {value!r} is not a valid {what} name",
                f"A {what} name is a DNS-1123 label: lower-case letters, digits and '-', 1-63 characters.",
            )
        ]
    return []


def check_cluster(attribute: str, value: Any) -> list[Problem]:
    """A cluster of the demo topology."""
    if not is_set(value):
        return []
    problems = check_label(attribute, value, "cluster")
    if problems:
        return problems
    if value not in CLUSTER_NAMES:
        return [
            Problem(
                attribute,
                f"{attribute}: unknown cluster {value!r}: the demo topology has {', '.join(CLUSTER_NAMES)}",
                "The local demo runs a fixed topology: region us-east (east-1, east-2) and region eu-west (west-1).",
            )
        ]
    return []


def check_service(attribute: str, value: Any) -> list[Problem]:
    """`name.namespace`, both DNS-1123 labels."""
    if not is_set(value):
        return []
    name, sep, namespace = str(value).partition(".")
    if not sep or not DNS1123_LABEL.match(name) or not DNS1123_LABEL.match(namespace):
        return [
            Problem(
                attribute,
                f"{attribute}: {value!r} is not a service name.namespace (e.g. echo.demo)",
                "Both parts are DNS-1123 labels: lower-case letters, digits and '-', 1-63 characters.",
            )
        ]
    return []


def check_dir(attribute: str, value: Any) -> list[Problem]:
    if is_set(value) and not str(value).strip():
        return [Problem(attribute, f"{attribute}: the demo directory must not be empty")]
    return []


def check_cluster_resource(config: dict[str, Any]) -> list[Problem]:
    """`isthmus_cluster`: name, region, zones, dir, backend."""
    name = config.get("name")
    problems = check_cluster("name", name) + check_dir("dir", config.get("dir"))
    backend = config.get("backend")
    if is_set(backend) and backend not in BACKENDS:
        problems.append(Problem("backend", f"backend: {backend!r} is not one of {', '.join(BACKENDS)}"))
    if problems or not is_set(name):
        return problems
    region = config.get("region")
    if is_set(region) and region != region_of(name):
        problems.append(
            Problem(
                "region",
                f"region: cluster {name} of the demo topology is in {region_of(name)}, not {region!r}",
            )
        )
    zones = config.get("zones")
    if is_set(zones) and all(is_set(z) for z in zones) and list(zones) != zones_of(name):
        problems.append(
            Problem(
                "zones",
                f"zones: cluster {name} of the demo topology has zones {', '.join(zones_of(name))}, "
                f"not {', '.join(map(str, zones)) or 'none'}",
            )
        )
    return problems


def check_peering_resource(config: dict[str, Any]) -> list[Problem]:
    """`isthmus_peering`: dir, cluster, peer (two different clusters)."""
    cluster, peer = config.get("cluster"), config.get("peer")
    problems = (
        check_dir("dir", config.get("dir")) + check_cluster("cluster", cluster) + check_cluster("peer", peer)
    )
    if not problems and is_set(cluster) and cluster == peer:
        problems.append(Problem("peer", f"peer: a cluster cannot peer with itself ({cluster})"))
    return problems


def check_export_resource(config: dict[str, Any]) -> list[Problem]:
    """`isthmus_service_export`: dir, cluster, service, to (cluster names, or ["*"])."""
    problems = (
        check_dir("dir", config.get("dir"))
        + check_cluster("cluster", config.get("cluster"))
        + check_service("service", config.get("service"))
    )
    to = config.get("to")
    if not is_set(to):
        return problems
    if len(to) == 0:
        problems.append(Problem("to", 'to: name at least one peer cluster, or "*" for every peer'))
        return problems
    if ANY_PEER in to and len(to) > 1:
        problems.append(Problem("to", 'to: "*" already means every peer: list it alone'))
        return problems
    for peer in to:
        if peer != ANY_PEER:
            problems += check_cluster("to", peer)
    if is_set(config.get("cluster")) and config.get("cluster") in to:
        problems.append(Problem("to", f"to: {config['cluster']} cannot export to itself"))
    if len(set(map(str, to))) != len(to):
        problems.append(Problem("to", "to: a peer is listed twice"))
    return problems


def check_failover_resource(config: dict[str, Any]) -> list[Problem]:
    """`isthmus_failover_policy`: dir, cluster, service, failover (regions, in order of preference)."""
    problems = (
        check_dir("dir", config.get("dir"))
        + check_cluster("cluster", config.get("cluster"))
        + check_service("service", config.get("service"))
    )
    failover = config.get("failover")
    if not is_set(failover):
        return problems
    if len(failover) == 0:
        problems.append(Problem("failover", "failover: name at least one region, in order of preference"))
    for region in failover:
        if not is_set(region):
            continue
        found = check_label("failover", region, "region")
        if not found and region not in REGIONS:
            found = [
                Problem(
                    "failover",
                    f"failover: unknown region {region!r}: the demo topology has {', '.join(REGIONS)}",
                )
            ]
        problems += found
    if len(set(map(str, failover))) != len(failover):
        problems.append(Problem("failover", "failover: a region is listed twice"))
    return problems


def check_route_rules_resource(config: dict[str, Any]) -> list[Problem]:
    """`isthmus_route_rules`: dir, cluster, service, rules (JSON: a list of tables, each with a name).

    Only the shape is checked here; what the rules mean (regular expressions, weights, subsets,
    header names) is checked by the cluster's control plane when they are applied.
    """
    problems = (
        check_dir("dir", config.get("dir"))
        + check_cluster("cluster", config.get("cluster"))
        + check_service("service", config.get("service"))
    )
    text = config.get("rules")
    if not isinstance(text, str):
        return problems
    example = 'rules = jsonencode([{ name = "canary", split = [...] }])'
    try:
        rules = json.loads(text)
    except ValueError as exc:
        return problems + [Problem("rules", f"rules: not JSON ({exc})", example)]
    if not isinstance(rules, list):
        return problems + [Problem("rules", "rules: must be a JSON list of rules", example)]
    seen: set[str] = set()
    for index, rule in enumerate(rules, start=1):
        name = rule.get("name") if isinstance(rule, dict) else None
        if not isinstance(rule, dict):
            problems.append(Problem("rules", f"rules: rule #{index} is not an object", example))
        elif not isinstance(name, str) or not name.strip():
            problems.append(Problem("rules", f"rules: rule #{index} has no name", "Every rule needs a name: errors name it."))
        elif name in seen:
            problems.append(Problem("rules", f'rules: rule "{name}" is given twice'))
        else:
            seen.add(name)
    return problems


def split_import_id(text: str, parts: int) -> list[str] | None:
    """`<dir>:<a>[:<b>]` into its parts; the directory may itself hold ':' (it is everything before)."""
    pieces = text.rsplit(":", parts - 1)
    if len(pieces) != parts or not all(p.strip() for p in pieces):
        return None
    return pieces
