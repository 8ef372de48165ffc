"""The dashboard's view model: Prometheus text from gateways and control planes in, one JSON-ready
overview out (the same data feeds `/dashboard/`, `/api/v1/overview` and `isthmus top`).

Pure: no sockets, no trio, no clock. Every call takes `now` (wall-clock seconds, for display).
The scraper (`federation.dashboard.app`) calls `MeshModel.ingest_round(now, results)` once per
scrape round with each target's text or the reason it did not answer; `MeshModel.overview(now)`
computes rates, success, latency quantiles, traffic share by locality, the mesh map, failover
events and warnings from a short ring of samples kept per target.

Peers: the control plane hands each linked peer's summary to `set_peer_summary(name, body, now)`
(checked by `federation.dashboard.summary`; a lie is refused, never shown) or the reason it got
none to `set_peer_failure(name, error, now)`; both return a line worth logging when the peer's
state changes, else None. The overview's `peers` section shows each peer's last good summary, its
age, and since when the peer does not answer. `summary(now, ...)` is this cluster's own summary for
a linked peer, projected from `overview` (`summary.build_summary`).

Metric names and labels are the contract in `METRICS.md`. Imports `attrs`, the standard library
and the pure `federation.dashboard.summary` only; never trio, httpx, `gateway` or the control plane.
"""

from __future__ import annotations

import bisect
import datetime
import math
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from federation.dashboard.summary import SummaryRefused, build_summary, decode_summary, parse_summary

Labels = tuple[tuple[str, str], ...]
Key = tuple[str, Labels]

# Only these families are kept from a scrape: everything the overview reads (METRICS.md).
KEPT_FAMILIES = frozenset({
    "isthmus_requests", "isthmus_request_duration_seconds", "isthmus_endpoints", "isthmus_active_priority",
    "isthmus_failover_transitions", "isthmus_peer_probe_up", "isthmus_peer_probe_rtt_seconds",
    "isthmus_catalog_revision", "isthmus_catalog_stale_seconds", "isthmus_certificate_expiry_seconds",
    "isthmus_cluster_info", "isthmus_circuit_breakers_open", "isthmus_retries", "isthmus_timeouts",
    "isthmus_authz_denials", "isthmus_tls_handshake_failures", "isthmus_federation_resyncs",
})  # fmt: skip
STALE_WARNING_S = 30.0  # a catalog unconfirmed for longer than a few sync heartbeats is worth a look
CERT_WARNING_S = 7 * 86400.0  # a week leaves time to rotate by hand if automatic rotation failed
CERT_CRITICAL_S = 86400.0
MIN_SHIFT_REQUESTS = 3  # fewer requests in a round than this say nothing about where traffic goes
PEER_KEEP_S = 300.0  # a silent peer's last good summary is shown (greyed) for this long, then omitted


class MetricsParseError(ValueError):
    """A target answered with something that is not the Prometheus text format."""


@attrs.frozen
class Target:
    """One thing the dashboard scrapes: a gateway's admin `/metrics`, or a control plane's.

    `render`, when given, returns the metrics text in-process (the control plane's own registry)
    instead of fetching `url`."""

    name: str
    kind: str  # "gateway" | "control"
    cluster: str
    url: str = ""
    region: str = ""
    zones: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    render: Callable[[], bytes | str] | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class Snapshot:
    """The kept samples of one scrape of one target at `at`."""

    at: float
    samples: Mapping[Key, float]


SAMPLE_LINE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?\s*$")
LABEL_PAIR = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
KEPT_SAMPLES = frozenset(
    f"{family}{suffix}" for family in KEPT_FAMILIES for suffix in ("", "_total", "_bucket", "_count", "_sum")
)


def _unescape(value: str) -> str:
    return re.sub(r"\\[\\\"n]", lambda m: ESCAPES[m.group(0)], value) if "\\" in value else value


def parse_metrics(text: str | bytes) -> dict[Key, float]:
    """The samples of the families the overview reads, keyed by (sample name, sorted labels).

    A line-oriented reader of the Prometheus text format (version 0.0.4) that skips the families it
    does not keep before parsing their labels: a gateway with 1,000 services writes ~25,000 lines a
    second, which `prometheus_client.parser` reads in over a second; this reads them in a fraction.
    Its output equals `prometheus_client.parser`'s for the kept families (a unit test checks)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    out: dict[Key, float] = {}
    for number, line in enumerate(text.split("\n"), 1):
        if not line or line[0] == "#" or line.isspace():
            continue
        match = SAMPLE_LINE.match(line)
        if match is None:
            raise MetricsParseError(f"not Prometheus text: line {number}: {line[:60]!r}")
        name, labels_text, value_text = match.groups()
        if name not in KEPT_SAMPLES:
            continue
        labels: list[tuple[str, str]] = []
        if labels_text:
            pos = 0
            while pos < len(labels_text):
                pair = LABEL_PAIR.match(labels_text, pos)
                if pair is None:
                    raise MetricsParseError(f"not Prometheus text: line {number}: bad labels {labels_text[:60]!r}")
                labels.append((pair.group(1), _unescape(pair.group(2))))
                pos = pair.end()
        try:
            value = float(value_text)
        except ValueError:
            raise MetricsParseError(f"not Prometheus text: line {number}: value {value_text[:20]!r}") from None
        out[(name, tuple(sorted(labels)))] = value
    return out


def _increase(old: float, new: float) -> float:
    """A counter's increase, treating a drop as a restart (as Prometheus' `increase` does); a series
    absent from the older snapshot started at 0 after it."""
    return new if new < old else new - old


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """`histogram_quantile` over cumulative bucket counts (`le` -> count); None without observations.

    Linear interpolation inside the bucket holding the rank; the +Inf bucket answers with the
    largest finite bound, as Prometheus does."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    counts = [buckets[b] for b in bounds]
    # Buckets summed across targets may be non-monotonic after a restart; enforce monotony.
    for i in range(1, len(counts)):
        counts[i] = max(counts[i], counts[i - 1])
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    i = bisect.bisect_left(counts, rank)
    i = min(i, len(bounds) - 1)
    if math.isinf(bounds[i]):
        finite = [b for b in bounds if not math.isinf(b)]
        return finite[-1] if finite else None
    lower = 0.0 if i == 0 else bounds[i - 1]
    below = 0.0 if i == 0 else counts[i - 1]
    in_bucket = counts[i] - below
    if in_bucket <= 0:
        return bounds[i]
    return lower + (bounds[i] - lower) * (rank - below) / in_bucket


def is_error(code: str) -> bool:
    """Istio's success rate counts 5xx as failures; we also count 0 (the client went away)."""
    return not code.isdigit() or code == "0" or code.startswith("5")


def iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%H:%M:%SZ")


@attrs.define
class _TargetState:
    target: Target
    ring: deque[Snapshot]
    up: bool = False
    since: float | None = None  # when the current state (up or unreachable) began
    error: str = ""
    last_ok: float | None = None


@attrs.define
class _PeerState:
    """What this cluster knows of one linked peer's summary."""

    state: str = "waiting"  # "waiting" (none asked yet) | "ok" | "no-answer" | "refused"
    since: float | None = None  # when the current state began
    error: str = ""
    summary: dict[str, Any] | None = None  # the last good one (checked)
    received_at: float | None = None


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


@attrs.define
class _Totals:
    requests: float = 0.0
    errors: float = 0.0
    by_locality: dict[tuple[str, str], float] = attrs.field(factory=dict)  # (locality, cluster) -> requests
    buckets: dict[float, float] = attrs.field(factory=dict)

    def add_buckets(self, le: float, value: float) -> None:
        self.buckets[le] = self.buckets.get(le, 0.0) + value


class MeshModel:
    """What the dashboard knows: per target, a ring of snapshots; per service, a short history;
    the failover events seen. One instance per control plane."""

    def __init__(self, *, rate_window_s: float = 10.0, history_len: int = 120, max_events: int = 200,
                 fresh_s: float = 5.0) -> None:
        self.rate_window_s = rate_window_s
        self.history_len = history_len
        self.fresh_s = fresh_s
        self.targets: dict[str, _TargetState] = {}
        self.history: dict[str, deque[tuple[float, float, float | None]]] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self._dominant: dict[str, str] = {}
        self._links_down: dict[tuple[str, str], float] = {}
        self.rounds = 0
        self.peers: dict[str, _PeerState] = {}

    # -- ingest -----------------------------------------------------------------------------------

    def ingest_round(self, now: float, results: Iterable[tuple[Target, str | bytes | BaseException | str]]) -> None:
        """One scrape round: each target with its metrics text, or the error it failed with."""
        previous: dict[str, Snapshot | None] = {}
        seen: set[str] = set()
        for target, result in results:
            seen.add(target.name)
            state = self.targets.get(target.name)
            if state is None or state.target != target:
                ring = state.ring if state is not None else deque()
                state = _TargetState(target, ring)
                self.targets[target.name] = state
            previous[target.name] = state.ring[-1] if state.ring else None
            if isinstance(result, BaseException):
                self._mark_unreachable(state, now, _describe(result))
                continue
            try:
                samples = parse_metrics(result)
            except MetricsParseError as exc:
                self._mark_unreachable(state, now, str(exc))
                continue
            if not state.up:
                state.up, state.since, state.error = True, now, ""
            state.last_ok = now
            state.ring.append(Snapshot(now, samples))
            while len(state.ring) > 2 and state.ring[1].at <= now - self.rate_window_s:
                state.ring.popleft()
        for name in list(self.targets):
            if name not in seen:
                del self.targets[name]
        self.rounds += 1
        self._record_round(now, previous)

    def _mark_unreachable(self, state: _TargetState, now: float, error: str) -> None:
        if state.up or state.since is None:
            state.since = now
        state.up = False
        state.error = error

    def _record_round(self, now: float, previous: Mapping[str, Snapshot | None]) -> None:
        """Per-round work: service history, observed traffic moves, failover transitions, link state."""
        per_service: dict[str, _Totals] = {}
        elapsed = 0.0
        localities = self.cluster_localities()
        for name, old in previous.items():
            state = self.targets[name]
            if old is None or not state.ring or state.ring[-1].at != now or old is state.ring[-1]:
                continue
            new = state.ring[-1]
            elapsed = max(elapsed, new.at - old.at)
            for (sample, labels), value in new.samples.items():
                if sample == "isthmus_requests_total":
                    delta = _increase(old.samples.get((sample, labels), 0.0), value)
                    if delta <= 0:
                        continue
                    lab = dict(labels)
                    totals = per_service.setdefault(lab.get("destination_service", ""), _Totals())
                    totals.requests += delta
                    if is_error(lab.get("response_code", "")):
                        totals.errors += delta
                    else:
                        where = _locality_of(lab, localities)
                        totals.by_locality[where] = totals.by_locality.get(where, 0.0) + delta
                elif sample == "isthmus_failover_transitions_total":
                    delta = _increase(old.samples.get((sample, labels), 0.0), value)
                    if delta > 0:
                        lab = dict(labels)
                        frm, to = lab.get("from_priority", "?"), lab.get("to_priority", "?")
                        kind = "failback" if _as_int(to) < _as_int(frm) else "failover"
                        self.events.append({
                            "at": now, "service": lab.get("service", ""), "kind": kind, "from": f"priority {frm}",
                            "to": f"priority {to}", "seen_by": state.target.cluster,
                            "detail": f"{lab.get('service', '')}: {kind} from priority {frm} to {to}"
                                      f" (seen by {state.target.name})",
                        })  # fmt: skip
        for service, totals in per_service.items():
            history = self.history.setdefault(service, deque(maxlen=self.history_len))
            rps = totals.requests / elapsed if elapsed > 0 else 0.0
            success = None if totals.requests <= 0 else 1 - totals.errors / totals.requests
            history.append((now, rps, success))
            served = sum(totals.by_locality.values())
            if served < MIN_SHIFT_REQUESTS:
                continue
            (locality, cluster), count = max(totals.by_locality.items(), key=lambda kv: kv[1])
            if count * 2 <= served:
                continue  # no locality serves most of the traffic: a spread, not a move
            where = _place(locality, cluster)
            before = self._dominant.get(service)
            self._dominant[service] = where
            if before is not None and before != where:
                self.events.append({
                    "at": now, "service": service, "kind": "traffic-moved", "from": before, "to": where, "seen_by": "",
                    "detail": f"{service}: traffic moved from {before} to {where}",
                })  # fmt: skip
        for (src, dst), up in self._probe_states(now).items():
            if up is False:
                self._links_down.setdefault((src, dst), now)
            else:
                self._links_down.pop((src, dst), None)

    # -- peers' summaries ---------------------------------------------------------------------------

    def set_peer_summary(self, name: str, body: bytes | Any, now: float) -> str | None:
        """A linked peer answered with `body` (its bytes, or decoded JSON): kept if it is a summary of
        `name`, else recorded as refused. Returns a line to log when the peer's state changes."""
        try:
            if isinstance(body, bytes | bytearray):
                summary = decode_summary(bytes(body), expect_cluster=name)
            else:
                summary = parse_summary(body, expect_cluster=name)
        except SummaryRefused as exc:
            return self._peer_state(name, "refused", now, f"summary refused: {exc}")
        peer = self.peers.setdefault(name, _PeerState())
        peer.summary, peer.received_at = summary, now
        return self._peer_state(name, "ok", now, "")

    def set_peer_failure(self, name: str, error: str, now: float) -> str | None:
        """A linked peer's summary could not be had (no answer, an HTTP error, too large)."""
        return self._peer_state(name, "no-answer", now, error)

    def forget_peers(self, keep: Iterable[str]) -> None:
        """Drop the summaries of peers no longer linked."""
        wanted = set(keep)
        for name in list(self.peers):
            if name not in wanted:
                del self.peers[name]

    def _peer_state(self, name: str, state: str, now: float, error: str) -> str | None:
        peer = self.peers.setdefault(name, _PeerState())
        before = peer.state
        peer.error = error[:300]
        if before == state:
            return None
        peer.state, peer.since = state, now
        if state == "ok":
            return None if before == "waiting" else f"peer {name}: summary received again"
        return f"peer {name}: {peer.error}"

    def summary(self, now: float, *, cluster: str, region: str, zones: Iterable[str],
                services: Iterable[str], viewer: str | None = None) -> dict[str, Any]:
        """This cluster's summary for `viewer`, a linked peer that may see `services` (`summary.build_summary`)."""
        return build_summary(self.overview(now), cluster=cluster, region=region, zones=tuple(zones),
                             services=tuple(services), viewer=viewer)  # fmt: skip

    def _peers(self, now: float) -> list[dict[str, Any]]:
        out = []
        for name, peer in sorted(self.peers.items()):
            kept = peer.received_at is not None and now - peer.received_at <= PEER_KEEP_S
            summary = peer.summary if kept else None
            health = "unknown"
            if peer.state in ("no-answer", "refused"):
                health = "silent"
            elif summary is not None:
                degraded = any(g["state"] != "up" for g in summary["gateways"]) or not summary["gateways"] \
                    or (summary["stale_s"] or 0.0) > STALE_WARNING_S
                health = "degraded" if degraded else "ok"
            out.append({
                "name": name, "state": peer.state, "since": peer.since, "error": peer.error, "health": health,
                "current": peer.state == "ok", "received_at": peer.received_at,
                "age_s": None if peer.received_at is None else round(max(0.0, now - peer.received_at), 1),
                "summary": summary,
            })  # fmt: skip
        return out

    # -- queries ------------------------------------------------------------------------------------

    def _fresh(self, now: float) -> list[_TargetState]:
        return [s for s in self.targets.values() if s.up and s.ring and s.ring[-1].at >= now - self.fresh_s]

    def _latest(self, now: float) -> Iterable[tuple[_TargetState, str, dict[str, str], float]]:
        for state in self._fresh(now):
            for (sample, labels), value in state.ring[-1].samples.items():
                yield state, sample, dict(labels), value

    def cluster_localities(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        """cluster -> (region, zones), from the targets and `isthmus_cluster_info`."""
        out: dict[str, tuple[str, tuple[str, ...]]] = {}
        for state in self.targets.values():
            t = state.target
            if t.region:
                region, zones = out.get(t.cluster, (t.region, ()))
                out[t.cluster] = (t.region, tuple(sorted(set(zones) | set(t.zones))))
            if state.ring:
                for (sample, labels), _value in state.ring[-1].samples.items():
                    if sample == "isthmus_cluster_info":
                        lab = dict(labels)
                        zones = tuple(z for z in lab.get("zones", "").split(",") if z)
                        if lab.get("cluster") and lab.get("region"):
                            out.setdefault(lab["cluster"], (lab["region"], zones))
        return out

    def _probe_states(self, now: float) -> dict[tuple[str, str], bool | None]:
        states: dict[tuple[str, str], bool | None] = {}
        for _state, sample, lab, value in self._latest(now):
            if sample == "isthmus_peer_probe_up":
                states[(lab.get("source_cluster", ""), lab.get("destination_cluster", ""))] = value >= 1
        return states

    def overview(self, now: float) -> dict[str, Any]:
        """The whole view model (JSON-ready): targets, mesh map, services, pairs, events, warnings."""
        localities = self.cluster_localities()
        services: dict[str, _Totals] = {}
        pairs: dict[tuple[str, str], _Totals] = {}
        gauges: dict[str, list[tuple[_TargetState, dict[str, str], float]]] = {}
        window = 0.0
        for state in self._fresh(now):
            ring = state.ring
            new = ring[-1]
            old = next((s for s in ring if s.at >= new.at - self.rate_window_s), ring[0])
            if old is new and len(ring) > 1:
                old = ring[-2]
            interval = new.at - old.at
            for (sample, labels), value in new.samples.items():
                if sample in ("isthmus_requests_total", "isthmus_request_duration_seconds_bucket"):
                    if interval <= 0:
                        continue
                    delta = _increase(old.samples.get((sample, labels), 0.0), value) / interval
                    if delta <= 0:
                        continue
                    lab = dict(labels)
                    service = services.setdefault(lab.get("destination_service", ""), _Totals())
                    pair = pairs.setdefault((lab.get("source_cluster", ""), lab.get("destination_cluster", "")),
                                            _Totals())
                    if sample == "isthmus_requests_total":
                        window = max(window, interval)
                        for totals in (service, pair):
                            totals.requests += delta
                            if is_error(lab.get("response_code", "")):
                                totals.errors += delta
                        if not is_error(lab.get("response_code", "")):
                            where = _locality_of(lab, localities)
                            service.by_locality[where] = service.by_locality.get(where, 0.0) + delta
                    else:
                        le = float(lab.get("le", "inf"))
                        service.add_buckets(le, delta)
                        pair.add_buckets(le, delta)
                else:
                    gauges.setdefault(sample, []).append((state, dict(labels), value))
        peers = self._peers(now)
        return {
            "generated_at": now,
            "rate_window_s": self.rate_window_s,
            "measured_window_s": _round(window),
            "rounds": self.rounds,
            "targets": [self._target_view(s) for s in sorted(self.targets.values(), key=lambda s: s.target.name)],
            "regions": self._regions(now, localities, gauges, peers),
            "links": self._links(now, pairs, gauges),
            "services": self._services(services, gauges),
            "pairs": [
                {"source": src, "destination": dst, "rps": _round(t.requests), "success_rate": _success(t),
                 "p99_ms": _ms(quantile(0.99, t.buckets))}
                for (src, dst), t in sorted(pairs.items()) if t.requests > 0
            ],  # fmt: skip
            "events": sorted(self.events, key=lambda e: e["at"], reverse=True),
            "warnings": self._warnings(now, gauges, peers),
            "peers": peers,
        }

    def _target_view(self, state: _TargetState) -> dict[str, Any]:
        t = state.target
        return {
            "name": t.name, "kind": t.kind, "cluster": t.cluster, "url": t.url or "(in process)",
            "state": "up" if state.up else "unreachable", "since": state.since, "error": state.error,
            "last_ok": state.last_ok,
        }  # fmt: skip

    def _regions(self, now: float, localities: Mapping[str, tuple[str, tuple[str, ...]]],
                 gauges: Mapping[str, list[tuple[_TargetState, dict[str, str], float]]],
                 peers: Iterable[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
        clusters: dict[str, dict[str, Any]] = {}

        def cluster(name: str) -> dict[str, Any]:
            if name not in clusters:
                region, zones = localities.get(name, ("unknown", ()))
                clusters[name] = {"name": name, "region": region, "zones": list(zones), "gateways": [],
                                  "controls": [], "catalog_revision": None, "stale_s": None, "cert_expiry_s": None,
                                  "peer_health": None}  # fmt: skip
            return clusters[name]

        for name in localities:
            cluster(name)
        for state in self.targets.values():
            entry = {"name": state.target.name, "state": "up" if state.up else "unreachable",
                     "since": state.since, "error": state.error}  # fmt: skip
            cluster(state.target.cluster)["gateways" if state.target.kind == "gateway" else "controls"].append(entry)
        for state, lab, value in gauges.get("isthmus_catalog_revision", []):
            c = cluster(lab.get("cluster") or state.target.cluster)
            c["catalog_revision"] = max(c["catalog_revision"] or 0, int(value))
        for state, lab, value in gauges.get("isthmus_catalog_stale_seconds", []):
            c = cluster(lab.get("cluster") or state.target.cluster)
            c["stale_s"] = max(c["stale_s"] or 0.0, round(value, 1))
        for state, _lab, value in gauges.get("isthmus_certificate_expiry_seconds", []):
            c = cluster(state.target.cluster)  # the identities a cluster's own gateways and control plane use
            c["cert_expiry_s"] = round(value if c["cert_expiry_s"] is None else min(c["cert_expiry_s"], value), 1)
        for src, dst in self._probe_states(now):
            cluster(src)
            cluster(dst)
        for peer in peers:
            if peer["name"] in clusters:  # a peer's summary colours its node; it adds none to the map
                clusters[peer["name"]]["peer_health"] = peer["health"]
        regions: dict[str, list[dict[str, Any]]] = {}
        for c in sorted(clusters.values(), key=lambda c: c["name"]):
            regions.setdefault(c["region"], []).append(c)
        return [{"name": r, "clusters": cs} for r, cs in sorted(regions.items())]

    def _links(self, now: float, pairs: Mapping[tuple[str, str], _Totals],
               gauges: Mapping[str, list[tuple[_TargetState, dict[str, str], float]]]) -> list[dict[str, Any]]:
        links: dict[tuple[str, str], dict[str, Any]] = {}

        def link(src: str, dst: str) -> dict[str, Any]:
            return links.setdefault((src, dst), {"source": src, "destination": dst, "state": "unknown",
                                                 "rtt_ms": None, "rps": 0.0, "since": None})  # fmt: skip

        for (src, dst), up in self._probe_states(now).items():
            entry = link(src, dst)
            entry["state"] = "up" if up else "down"
            entry["since"] = self._links_down.get((src, dst))
        for _state, lab, value in gauges.get("isthmus_peer_probe_rtt_seconds", []):
            key = (lab.get("source_cluster", ""), lab.get("destination_cluster", ""))
            if key in links and links[key]["state"] == "up":
                links[key]["rtt_ms"] = round(value * 1000, 2)
        for (src, dst), totals in pairs.items():
            if src and dst and src != dst and totals.requests > 0:
                link(src, dst)["rps"] = round(totals.requests, 3)
        return [links[k] for k in sorted(links)]

    def _services(self, services: Mapping[str, _Totals],
                  gauges: Mapping[str, list[tuple[_TargetState, dict[str, str], float]]]) -> list[dict[str, Any]]:
        endpoints: dict[str, dict[str, int]] = {}
        for _state, lab, value in gauges.get("isthmus_endpoints", []):
            counts = endpoints.setdefault(lab.get("service", ""), {})
            counts[lab.get("state", "healthy")] = counts.get(lab.get("state", "healthy"), 0) + int(value)
        priority: dict[str, int] = {}
        for _state, lab, value in gauges.get("isthmus_active_priority", []):
            name = lab.get("service", "")
            priority[name] = max(priority.get(name, 0), int(value))
        out = []
        for name in sorted(set(services) | set(self.history) | set(endpoints)):
            if not name:
                continue
            totals = services.get(name, _Totals())
            served = sum(totals.by_locality.values())
            share = [
                {"locality": loc, "cluster": cl, "fraction": round(v / served, 4), "rps": round(v, 3)}
                for (loc, cl), v in sorted(totals.by_locality.items(), key=lambda kv: -kv[1])
            ] if served > 0 else []  # fmt: skip
            out.append({
                "name": name,
                "rps": round(totals.requests, 3),
                "success_rate": _success(totals),
                "p50_ms": _ms(quantile(0.5, totals.buckets)),
                "p99_ms": _ms(quantile(0.99, totals.buckets)),
                "share": share,
                "active_locality": _place(share[0]["locality"], share[0]["cluster"]) if share else None,
                "active_priority": priority.get(name),
                "endpoints": endpoints.get(name, {}),
                "history": [[t, round(r, 3), None if s is None else round(s, 4)]
                            for t, r, s in list(self.history.get(name, ()))[-60:]],
            })  # fmt: skip
        return out

    def _warnings(self, now: float, gauges: Mapping[str, list[tuple[_TargetState, dict[str, str], float]]],
                  peers: Iterable[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
        warnings: list[dict[str, Any]] = []
        for state in sorted(self.targets.values(), key=lambda s: s.target.name):
            if not state.up:
                t = state.target
                since = "" if state.since is None else f" since {iso(state.since)}"
                warnings.append({"kind": "unreachable", "severity": "critical", "subject": t.name, "since": state.since,
                                 "message": f"{t.name} ({t.url or 'in process'}) unreachable{since}: {state.error}"})  # fmt: skip
        for peer in peers:
            if not peer["current"] and peer["state"] != "waiting":
                warnings.append({"kind": "peer-summary", "severity": "warning", "subject": peer["name"],
                                 "since": peer["since"], "message": f"peer {peer['name']} sends no summary since "
                                 f"{iso(peer['since'])}: {peer['error']}"})  # fmt: skip
        for (src, dst), since in sorted(self._links_down.items()):
            warnings.append({"kind": "link-down", "severity": "critical", "subject": f"{src}->{dst}", "since": since,
                             "message": f"peer {dst} does not answer {src}'s probes since {iso(since)}"})  # fmt: skip
        for state, lab, value in gauges.get("isthmus_catalog_stale_seconds", []):
            if value > STALE_WARNING_S:
                where = lab.get("cluster") or state.target.cluster
                warnings.append({"kind": "stale", "severity": "warning", "subject": where, "since": now - value,
                                 "message": f"catalog of {where} seen by {state.target.name} is stale for {value:.0f} s"})  # fmt: skip
        seen: set[str] = set()
        for _state, lab, value in sorted(gauges.get("isthmus_certificate_expiry_seconds", []), key=lambda g: g[2]):
            identity = lab.get("identity", "")
            if identity in seen or value >= CERT_WARNING_S:
                continue
            seen.add(identity)
            if value <= 0:
                text, severity = "has expired", "critical"
            else:
                text = f"expires in {value / 86400:.1f} days" if value >= 86400 else f"expires in {value / 3600:.1f} h"
                severity = "critical" if value < CERT_CRITICAL_S else "warning"
            warnings.append({"kind": "certificate", "severity": severity, "subject": identity, "since": None,
                             "message": f"certificate {identity} {text}"})  # fmt: skip
        return warnings


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _as_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def _locality_of(lab: Mapping[str, str], localities: Mapping[str, tuple[str, tuple[str, ...]]]) -> tuple[str, str]:
    """(locality, cluster) a request went to: its `destination_locality`, else its cluster's."""
    cluster = lab.get("destination_cluster", "")
    if lab.get("destination_locality"):
        return lab["destination_locality"], cluster
    region, zones = localities.get(cluster, ("", ()))
    if not region:
        return "", cluster
    return (f"{region}/{zones[0]}" if len(zones) == 1 else region), cluster


def _place(locality: str, cluster: str) -> str:
    if locality and cluster:
        return f"{locality} ({cluster})"
    return locality or cluster or "unknown"


def _success(totals: _Totals) -> float | None:
    return None if totals.requests <= 0 else round(1 - totals.errors / totals.requests, 4)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)
