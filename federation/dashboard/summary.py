"""A cluster's dashboard summary for a linked peer: what this cluster builds from its own overview,
and what it accepts from a peer's.

Exporter side: `build_summary(overview, cluster=..., region=..., zones=..., services=...)` projects
this cluster's `MeshModel.overview` (no arithmetic of its own) onto what a linked peer may see: the
cluster and its locality; its gateways, up or unreachable; per service exported to that peer its
request rate, success rate, p50/p99, traffic share by locality and active locality; the catalog's
revision and staleness; the nearest certificate expiry; the recent failover events of those
services. Names and numbers only, capped (`MAX_SERVICES`, `MAX_SHARE`, `MAX_EVENTS`...): a few KB.
A summary names no cluster but this one and the peer it is for (`viewer`): traffic this cluster
sent to a third cluster shows as `OTHER_CLUSTERS`, so a peer does not learn who else is linked.

Importer side: a peer may lie or be broken. `decode_summary(body, expect_cluster=...)` accepts the
bytes of an answer only if they are at most `MAX_SUMMARY_BYTES` of JSON with exactly the shape
built above: known keys only, every name matching `NAME` (letters, digits and `._:/(),-` and
spaces: no markup), every number finite and within its bound, every list within its cap, and the
cluster the one that was asked. Anything else raises `SummaryRefused` with a one-line reason. The
accepted value is a fresh dict built from the checked values only (never the peer's objects).

Pure: no trio, no I/O, no clock. Imports the standard library only.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Mapping
from typing import Any

VERSION = 1
# An honest summary is a few KB; the caps bound the worst honest one (~150 KB) and what a liar can make us hold.
MAX_SUMMARY_BYTES = 256 * 1024
MAX_SERVICES = 100  # the busiest exported services (by request rate) are sent
MAX_SHARE = 4  # localities per service: the active one and its nearest spill-over targets
MAX_EVENTS = 20
MAX_GATEWAYS = 16
MAX_ZONES = 16
MAX_NAME = 120
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/(),\- ]*")
EVENT_KINDS = frozenset({"failover", "failback", "traffic-moved"})
OTHER_CLUSTERS = "other clusters"
_PLACE = re.compile(r"(?P<locality>.*) \((?P<cluster>[^()]*)\)")  # "region/zone (cluster)", as the model writes it
GATEWAY_STATES = frozenset({"up", "unreachable"})
# Bounds of the numbers a summary may carry: generous for any real mesh, small enough to draw.
MAX_TIME = 1e11  # wall-clock seconds (the year 5138)
MAX_RPS = 1e9
MAX_MS = 1e7
MAX_AGE_S = 1e10
MAX_REVISION = 2**53

TOP_KEYS = frozenset({"version", "cluster", "region", "zones", "generated_at", "gateways", "catalog_revision",
                      "stale_s", "cert_expiry_s", "services", "events"})  # fmt: skip
SERVICE_KEYS = frozenset({"name", "rps", "success_rate", "p50_ms", "p99_ms", "share", "active_locality"})
SHARE_KEYS = frozenset({"locality", "cluster", "fraction"})
GATEWAY_KEYS = frozenset({"name", "state", "since"})
EVENT_KEYS = frozenset({"at", "service", "kind", "from", "to"})


class SummaryRefused(ValueError):
    """A peer's summary that was not accepted; the message says where and why, in one line."""


def is_name(value: object) -> bool:
    return isinstance(value, str) and len(value) <= MAX_NAME and NAME.fullmatch(value) is not None


# --- exporter side --------------------------------------------------------------------------------


def build_summary(overview: Mapping[str, Any], *, cluster: str, region: str, zones: Collection[str],
                  services: Collection[str], viewer: str | None = None) -> dict[str, Any]:
    """What `viewer`'s dashboard may show of this cluster: `overview` narrowed to `cluster`'s own
    gateways and catalog, to `services` (those exported to `viewer`), and to the two clusters' names."""
    allowed = {s for s in services if is_name(s)}
    visible = {cluster, viewer} if viewer is not None else None

    def place(text: Any) -> Any:
        match = _PLACE.fullmatch(text) if isinstance(text, str) else None
        if visible is None or match is None or match["cluster"] in visible:
            return text
        return OTHER_CLUSTERS

    own = next((c for r in overview.get("regions", ()) for c in r["clusters"] if c["name"] == cluster), {})
    gateways = [{"name": t["name"], "state": t["state"], "since": t["since"]}
                for t in overview.get("targets", ())
                if t["kind"] == "gateway" and t["cluster"] == cluster and is_name(t["name"])]  # fmt: skip
    chosen = sorted((s for s in overview.get("services", ()) if s["name"] in allowed), key=lambda s: (-s["rps"], s["name"]))
    out_services = []
    for s in chosen[:MAX_SERVICES]:
        share, hidden = [], 0.0
        for p in s["share"]:
            if not (_name_or_empty(p["locality"]) and _name_or_empty(p["cluster"])):
                continue
            if visible is not None and p["cluster"] not in visible:
                hidden += p["fraction"]
                continue
            share.append({"locality": p["locality"], "cluster": p["cluster"], "fraction": p["fraction"]})
        if hidden:
            share.append({"locality": "", "cluster": OTHER_CLUSTERS, "fraction": round(hidden, 4)})
        active = place(s["active_locality"])
        out_services.append({
            "name": s["name"], "rps": s["rps"], "success_rate": s["success_rate"], "p50_ms": s["p50_ms"],
            "p99_ms": s["p99_ms"], "share": share[:MAX_SHARE], "active_locality": active if is_name(active) else None,
        })  # fmt: skip
    events = [{"at": e["at"], "service": e["service"], "kind": e["kind"], "from": place(e["from"]), "to": place(e["to"])}
              for e in overview.get("events", ())
              if e["service"] in allowed and e["kind"] in EVENT_KINDS and is_name(e["from"]) and is_name(e["to"])]  # fmt: skip
    return {
        "version": VERSION,
        "cluster": cluster,
        "region": region,
        "zones": sorted(zones)[:MAX_ZONES],
        "generated_at": overview.get("generated_at"),
        "gateways": gateways[:MAX_GATEWAYS],
        "catalog_revision": own.get("catalog_revision"),
        "stale_s": own.get("stale_s"),
        "cert_expiry_s": own.get("cert_expiry_s"),
        "services": out_services,
        "events": events[:MAX_EVENTS],
    }


def _name_or_empty(value: object) -> bool:
    return value == "" or is_name(value)


# --- importer side --------------------------------------------------------------------------------


def decode_summary(body: bytes, *, expect_cluster: str) -> dict[str, Any]:
    """The checked summary in `body` (a peer's answer); `SummaryRefused` for anything else."""
    if len(body) > MAX_SUMMARY_BYTES:
        raise SummaryRefused(f"{len(body)} bytes, more than the {MAX_SUMMARY_BYTES} a summary may take")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: a deeply nested document
        raise SummaryRefused(f"not JSON: {type(exc).__name__}") from None
    return parse_summary(data, expect_cluster=expect_cluster)


def parse_summary(data: Any, *, expect_cluster: str) -> dict[str, Any]:
    """The checked copy of a decoded summary; `SummaryRefused` naming the first field that is wrong."""
    top = _object(data, "summary", TOP_KEYS)
    if top.get("version") != VERSION:
        raise SummaryRefused(f"version: {_show(top.get('version'))} is not {VERSION}")
    cluster = _name(top.get("cluster"), "cluster")
    if cluster != expect_cluster:
        raise SummaryRefused(f"cluster: {_show(cluster)} answered for {expect_cluster}")
    return {
        "version": VERSION,
        "cluster": cluster,
        "region": _name(top.get("region"), "region"),
        "zones": [_name(z, f"zones[{i}]") for i, z in enumerate(_list(top.get("zones"), "zones", MAX_ZONES))],
        "generated_at": _number(top.get("generated_at"), "generated_at", 0, MAX_TIME),
        "gateways": [_gateway(g, f"gateways[{i}]") for i, g in enumerate(_list(top.get("gateways"), "gateways", MAX_GATEWAYS))],
        "catalog_revision": _integer(top.get("catalog_revision"), "catalog_revision", 0, MAX_REVISION, optional=True),
        "stale_s": _number(top.get("stale_s"), "stale_s", 0, MAX_AGE_S, optional=True),
        "cert_expiry_s": _number(top.get("cert_expiry_s"), "cert_expiry_s", -MAX_AGE_S, MAX_AGE_S, optional=True),
        "services": [_service(s, f"services[{i}]") for i, s in enumerate(_list(top.get("services"), "services", MAX_SERVICES))],
        "events": [_event(e, f"events[{i}]") for i, e in enumerate(_list(top.get("events"), "events", MAX_EVENTS))],
    }


def _gateway(value: Any, where: str) -> dict[str, Any]:
    g = _object(value, where, GATEWAY_KEYS)
    state = g.get("state")
    if state not in GATEWAY_STATES:
        raise SummaryRefused(f"{where}.state: {_show(state)} is not one of {', '.join(sorted(GATEWAY_STATES))}")
    return {"name": _name(g.get("name"), f"{where}.name"), "state": state,
            "since": _number(g.get("since"), f"{where}.since", 0, MAX_TIME, optional=True)}  # fmt: skip


def _service(value: Any, where: str) -> dict[str, Any]:
    s = _object(value, where, SERVICE_KEYS)
    share = []
    for i, p in enumerate(_list(s.get("share"), f"{where}.share", MAX_SHARE)):
        p = _object(p, f"{where}.share[{i}]", SHARE_KEYS)
        share.append({"locality": _name(p.get("locality"), f"{where}.share[{i}].locality", empty=True),
                      "cluster": _name(p.get("cluster"), f"{where}.share[{i}].cluster", empty=True),
                      "fraction": _number(p.get("fraction"), f"{where}.share[{i}].fraction", 0, 1)})  # fmt: skip
    return {
        "name": _name(s.get("name"), f"{where}.name"),
        "rps": _number(s.get("rps"), f"{where}.rps", 0, MAX_RPS),
        "success_rate": _number(s.get("success_rate"), f"{where}.success_rate", 0, 1, optional=True),
        "p50_ms": _number(s.get("p50_ms"), f"{where}.p50_ms", 0, MAX_MS, optional=True),
        "p99_ms": _number(s.get("p99_ms"), f"{where}.p99_ms", 0, MAX_MS, optional=True),
        "share": share,
        "active_locality": _name(s.get("active_locality"), f"{where}.active_locality", optional=True),
    }


def _event(value: Any, where: str) -> dict[str, Any]:
    e = _object(value, where, EVENT_KEYS)
    kind = e.get("kind")
    if kind not in EVENT_KINDS:
        raise SummaryRefused(f"{where}.kind: {_show(kind)} is not one of {', '.join(sorted(EVENT_KINDS))}")
    return {"at": _number(e.get("at"), f"{where}.at", 0, MAX_TIME), "service": _name(e.get("service"), f"{where}.service"),
            "kind": kind, "from": _name(e.get("from"), f"{where}.from"), "to": _name(e.get("to"), f"{where}.to")}  # fmt: skip


def _object(value: Any, where: str, keys: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SummaryRefused(f"{where}: {type(value).__name__}, not an object")
    unknown = set(value) - keys
    if unknown:
        raise SummaryRefused(f"{where}: unknown field {_show(sorted(map(str, unknown))[0])}")
    return value


def _list(value: Any, where: str, cap: int) -> list[Any]:
    if not isinstance(value, list):
        raise SummaryRefused(f"{where}: {type(value).__name__}, not a list")
    if len(value) > cap:
        raise SummaryRefused(f"{where}: {len(value)} items, more than the {cap} a summary may carry")
    return value


def _name(value: Any, where: str, *, optional: bool = False, empty: bool = False) -> Any:
    if value is None and optional:
        return None
    if value == "" and empty:
        return ""
    if not is_name(value):
        raise SummaryRefused(f"{where}: {_show(value)} is not a name")
    return value


def _number(value: Any, where: str, low: float, high: float, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SummaryRefused(f"{where}: {_show(value)} is not a number")
    if (isinstance(value, float) and not math.isfinite(value)) or not low <= value <= high:
        raise SummaryRefused(f"{where}: {_show(value)} is outside [{low:g}, {high:g}]")
    return float(value)


def _integer(value: Any, where: str, low: int, high: int, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SummaryRefused(f"{where}: {_show(value)} is not an integer")
    if not low <= value <= high:
        raise SummaryRefused(f"{where}: {_show(value)} is outside [{low}, {high}]")
    return value


def _show(value: Any) -> str:
    """A short, one-line rendering of a peer's value for a reason (never the whole of a huge value)."""
    if isinstance(value, dict | list):
        return type(value).__name__
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
