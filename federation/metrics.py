"""The control plane's Prometheus metrics, served at `GET /metrics` on `control.api`.

Names and labels are those of `federation/dashboard/METRICS.md` ("Federation"):
`isthmus_cluster_info`, `isthmus_peer_probe_up`, `isthmus_peer_probe_rtt_seconds`,
`isthmus_catalog_revision`, `isthmus_catalog_stale_seconds`, `isthmus_federation_sync_latency_seconds`,
`isthmus_federation_resyncs_total`, `isthmus_certificate_expiry_seconds`, plus
`isthmus_federation_refused_total{peer,reason}` (what peers sent that was refused) and
`isthmus_tls_handshake_failures_total{listener="federation",reason}` (refused crossings).

Each control plane has its own `CollectorRegistry` (never the global one). Gauges and counters are
read from the plane's state at scrape time; only the sync latency is observed as it happens.
`peer_readings(plane, name, now)` is the one reading of a peer's probe and import: the gauges here,
`GET /v1/peers` (`isthmus cluster list`) and so the dashboard (which scrapes these gauges) show the
same probe state, round trip and staleness. Probes go to the peer's control plane through its
east-west gateway (`federation.control`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import attrs
import trio
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@attrs.frozen
class PeerReadings:
    """What this control plane knows of one peer right now (None: not measured yet)."""

    probe_up: bool | None  # the last probe answered (None: no probe finished yet)
    rtt_s: float | None  # round trip of the last probe, when it answered
    revision: int | None  # revision of the peer's catalog imported here
    stale_s: float | None  # how long the import has been unconfirmed (None: fresh)
    resyncs: int


def peer_readings(plane: Any, name: str, now: float) -> PeerReadings:
    probe = plane.probes.get(name)
    answered = probe is not None and probe.at is not None and not probe.error
    imp = plane.imports.get(name)
    return PeerReadings(
        probe_up=None if probe is None or probe.at is None else answered,
        rtt_s=probe.rtt_s if answered else None,
        revision=None if imp is None else imp.sync.revision,
        stale_s=None if imp is None else imp.sync.staleness(now),
        resyncs=0 if imp is None else len(imp.resyncs),
    )


class PlaneCollector:
    """Reads a `ControlPlane` at scrape time."""

    def __init__(self, plane: Any) -> None:
        self.plane = plane

    def collect(self) -> Iterator[Metric]:
        plane = self.plane
        me = plane.name
        now = trio.current_time()
        info = GaugeMetricFamily("isthmus_cluster_info", "this cluster and each linked peer", labels=["cluster", "region", "zones"])
        info.add_metric([me, plane.config.cluster.region, ",".join(plane.config.cluster.zones)], 1)
        up = GaugeMetricFamily("isthmus_peer_probe_up", "1 if the last probe of the peer answered",
                               labels=["source_cluster", "destination_cluster"])  # fmt: skip
        rtt = GaugeMetricFamily("isthmus_peer_probe_rtt_seconds", "round trip of the last answered probe",
                                labels=["source_cluster", "destination_cluster"])  # fmt: skip
        revision = GaugeMetricFamily("isthmus_catalog_revision", "revision of the catalog served or imported", labels=["cluster"])
        revision.add_metric([me], plane.local.revision)
        stale = GaugeMetricFamily("isthmus_catalog_stale_seconds", "how long a catalog has been unconfirmed", labels=["cluster"])
        stale.add_metric([me], 0.0 if plane.local_stale_since is None else max(0.0, now - plane.local_stale_since))
        resyncs = CounterMetricFamily("isthmus_federation_resyncs", "full resynchronisations of a peer's import", labels=["peer"])
        refused = CounterMetricFamily("isthmus_federation_refused", "items a peer sent that were refused", labels=["peer", "reason"])
        for name, peer in sorted(plane._peer_records.items()):
            info.add_metric([name, peer.region, ",".join(peer.zones)], 1)
            readings = peer_readings(plane, name, now)
            if readings.probe_up is not None:
                up.add_metric([me, name], 1.0 if readings.probe_up else 0.0)
            if readings.rtt_s is not None:
                rtt.add_metric([me, name], readings.rtt_s)
            imp = plane.imports.get(name)
            if imp is None:
                continue
            if readings.revision is not None:
                revision.add_metric([name], readings.revision)
            stale.add_metric([name], readings.stale_s or 0.0)
            resyncs.add_metric([name], readings.resyncs)
            for reason, count in sorted(imp.sync.refused.items()):
                refused.add_metric([name, reason], count)
        handshakes = CounterMetricFamily("isthmus_tls_handshake_failures", "refused TLS handshakes", labels=["listener", "reason"])
        for reason, count in sorted(plane.refused_crossings.items()):
            handshakes.add_metric(["federation", reason], count)
        expiry = GaugeMetricFamily("isthmus_certificate_expiry_seconds", "seconds until the certificate in use expires",
                                   labels=["identity"])  # fmt: skip
        expiry.add_metric([str(plane.identity.spiffe_id)], plane.identity.not_after.timestamp() - time.time())
        yield from (info, up, rtt, revision, stale, resyncs, refused, handshakes, expiry)


class PlaneMetrics:
    def __init__(self, plane: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(PlaneCollector(plane))
        self.sync_latency = Histogram(
            "isthmus_federation_sync_latency_seconds",
            "time from a peer's catalog change to its import here",
            ["peer"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
