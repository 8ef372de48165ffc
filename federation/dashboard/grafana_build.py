"""The Grafana dashboards in `grafana/*.json`, written as data: `python -m federation.dashboard.grafana_build`
rewrites the JSON files; a unit test checks the files match.

Each dashboard is importable as is (schemaVersion 39, a `${datasource}` Prometheus variable, every
panel's target using it). Pure; imports only the standard library.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

GRAFANA_DIR = Path(__file__).parent / "grafana"
SCHEMA_VERSION = 39
DS = {"type": "prometheus", "uid": "${datasource}"}
ERR = 'response_code=~"5..|0"'

# Error ratio that is 0 (not absent) when a service has traffic and no errors.
ERROR_RATIO = (
    f'(sum by (destination_service) (rate(isthmus_requests_total{{{ERR},destination_service=~"$service"}}[$__rate_interval]))'
    ' or sum by (destination_service) (rate(isthmus_requests_total{destination_service=~"$service"}[$__rate_interval])) * 0)'
    ' / sum by (destination_service) (rate(isthmus_requests_total{destination_service=~"$service"}[$__rate_interval]))'
)


def _var_datasource() -> dict[str, Any]:
    return {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []}  # fmt: skip


def _var_query(name: str, query: str, label: str) -> dict[str, Any]:
    return {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "query": {"query": query, "refId": f"{name}-values"}, "definition": query,
        "includeAll": True, "allValue": ".*", "multi": True, "refresh": 2, "sort": 1,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "hide": 0, "options": [], "regex": "",
    }  # fmt: skip


def _panel(pid: int, title: str, exprs: list[tuple[str, str]], *, kind: str = "timeseries", unit: str = "short",
           x: int = 0, y: int = 0, w: int = 12, h: int = 8, description: str = "") -> dict[str, Any]:
    return {
        "id": pid, "type": kind, "title": title, "description": description, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "showLegend": True}}
        if kind == "timeseries" else {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend, "range": True}
            for i, (expr, legend) in enumerate(exprs)
        ],
    }  # fmt: skip


def _layout(panels: list[tuple]) -> list[dict[str, Any]]:
    """Two panels a row, 8 high; `(title, exprs, kwargs)` in reading order."""
    out = []
    for i, (title, exprs, kwargs) in enumerate(panels):
        kwargs = dict(kwargs)
        w = kwargs.pop("w", 12)
        out.append(_panel(i + 1, title, exprs, x=(i % 2) * 12 if w == 12 else 0, y=(i // 2) * 8, w=w, **kwargs))
    return out


def _dashboard(uid: str, title: str, description: str, variables: list[dict[str, Any]], panels: list[tuple]) -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "description": description, "tags": ["isthmus"], "editable": True,
        "schemaVersion": SCHEMA_VERSION, "version": 1, "timezone": "browser", "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"}, "graphTooltip": 1,
        "templating": {"list": [_var_datasource(), *variables]},
        "annotations": {"list": []}, "links": [],
        "panels": _layout(panels),
    }  # fmt: skip


def dashboards() -> dict[str, dict[str, Any]]:
    service = _var_query("service", "label_values(isthmus_requests_total, destination_service)", "service")
    instance = _var_query("instance", 'label_values(up{job="isthmus-gateway"}, instance)', "gateway")
    source = _var_query("source", "label_values(isthmus_requests_total, source_cluster)", "source cluster")
    destination = _var_query("destination", "label_values(isthmus_requests_total, destination_cluster)",
                             "destination cluster")
    svc = 'destination_service=~"$service"'
    pair = 'source_cluster=~"$source",destination_cluster=~"$destination"'
    probe_pair = 'source_cluster=~"$source",destination_cluster=~"$destination"'
    inst = 'instance=~"$instance"'
    rate_i = "[$__rate_interval]"
    return {
        "mesh-overview.json": _dashboard("isthmus-mesh-overview", "Isthmus / Mesh overview",
            "Every service and cluster pair: traffic, success, latency, links, catalog and certificates.",
            [service], [
            ("Requests per second by service", [(f"sum by (destination_service) (rate(isthmus_requests_total{{{svc}}}{rate_i}))", "{{destination_service}}")], {"unit": "reqps"}),
            ("Success rate by service", [(f"1 - ({ERROR_RATIO})", "{{destination_service}}")], {"unit": "percentunit"}),
            ("p50 / p99 latency by service", [
                (f"histogram_quantile(0.5, sum by (destination_service, le) (rate(isthmus_request_duration_seconds_bucket{{{svc}}}{rate_i})))", "p50 {{destination_service}}"),
                (f"histogram_quantile(0.99, sum by (destination_service, le) (rate(isthmus_request_duration_seconds_bucket{{{svc}}}{rate_i})))", "p99 {{destination_service}}")], {"unit": "s"}),
            ("Traffic share by destination cluster", [(f"sum by (destination_service, destination_cluster) (rate(isthmus_requests_total{{{svc}}}{rate_i})) / ignoring (destination_cluster) group_left sum by (destination_service) (rate(isthmus_requests_total{{{svc}}}{rate_i}))", "{{destination_service}} → {{destination_cluster}}")], {"unit": "percentunit"}),
            ("Gateways up", [('up{job="isthmus-gateway"}', "{{instance}}")], {"kind": "stat"}),
            ("Peer links (probe up)", [("isthmus_peer_probe_up", "{{source_cluster}} → {{destination_cluster}}")], {"kind": "stat"}),
            ("Catalog staleness", [("max by (instance, cluster) (isthmus_catalog_stale_seconds)", "{{instance}} {{cluster}}")], {"unit": "s"}),
            ("Certificate expiry", [("min by (identity) (isthmus_certificate_expiry_seconds)", "{{identity}}")], {"unit": "s", "kind": "stat"}),
        ]),  # fmt: skip
        "gateway.json": _dashboard("isthmus-gateway", "Isthmus / Gateway",
            "One gateway: requests by code, latency, bytes, TCP connections, TLS failures, catalog.",
            [instance], [
            ("Requests per second by response code", [(f"sum by (response_code) (rate(isthmus_requests_total{{{inst}}}{rate_i}))", "{{response_code}}")], {"unit": "reqps"}),
            ("Latency p50 / p99", [
                (f"histogram_quantile(0.5, sum by (le) (rate(isthmus_request_duration_seconds_bucket{{{inst}}}{rate_i})))", "p50"),
                (f"histogram_quantile(0.99, sum by (le) (rate(isthmus_request_duration_seconds_bucket{{{inst}}}{rate_i})))", "p99")], {"unit": "s"}),
            ("Request and response bytes", [
                (f"sum(rate(isthmus_request_bytes_total{{{inst}}}{rate_i}))", "request"),
                (f"sum(rate(isthmus_response_bytes_total{{{inst}}}{rate_i}))", "response")], {"unit": "Bps"}),
            ("Gateway errors by reason", [(f'sum by (reason) (rate(isthmus_requests_total{{{inst},reason!=""}}{rate_i}))', "{{reason}}")], {"unit": "reqps"}),
            ("TCP connections", [
                (f"sum by (destination_service) (rate(isthmus_tcp_connections_opened_total{{{inst}}}{rate_i}))", "opened {{destination_service}}"),
                (f"sum by (destination_service) (rate(isthmus_tcp_connections_closed_total{{{inst}}}{rate_i}))", "closed {{destination_service}}")], {"unit": "cps"}),
            ("Open downstream connections", [(f"sum by (listener) (isthmus_active_connections{{{inst}}})", "{{listener}}")], {}),
            ("TLS handshake failures by reason", [(f"sum by (listener, reason) (rate(isthmus_tls_handshake_failures_total{{{inst}}}{rate_i}))", "{{listener}} {{reason}}")], {"unit": "ops"}),
            ("Catalog revision in force", [(f"isthmus_catalog_revision{{{inst}}}", "{{instance}}")], {"kind": "stat"}),
        ]),  # fmt: skip
        "cluster-pair.json": _dashboard("isthmus-cluster-pair", "Isthmus / Cluster pair",
            "One crossing between two clusters: traffic, success, latency, probe health and RTT, catalog sync.",
            [source, destination], [
            ("Requests per second", [(f"sum by (source_cluster, destination_cluster) (rate(isthmus_requests_total{{{pair}}}{rate_i}))", "{{source_cluster}} → {{destination_cluster}}")], {"unit": "reqps"}),
            ("Success rate", [(f'1 - (sum by (source_cluster, destination_cluster) (rate(isthmus_requests_total{{{pair},{ERR}}}{rate_i})) or sum by (source_cluster, destination_cluster) (rate(isthmus_requests_total{{{pair}}}{rate_i})) * 0) / sum by (source_cluster, destination_cluster) (rate(isthmus_requests_total{{{pair}}}{rate_i}))', "{{source_cluster}} → {{destination_cluster}}")], {"unit": "percentunit"}),
            ("Latency p99", [(f"histogram_quantile(0.99, sum by (source_cluster, destination_cluster, le) (rate(isthmus_request_duration_seconds_bucket{{{pair}}}{rate_i})))", "{{source_cluster}} → {{destination_cluster}}")], {"unit": "s"}),
            ("Probe up", [(f"isthmus_peer_probe_up{{{probe_pair}}}", "{{source_cluster}} → {{destination_cluster}}")], {}),
            ("Probe RTT", [(f"isthmus_peer_probe_rtt_seconds{{{probe_pair}}}", "{{source_cluster}} → {{destination_cluster}}")], {"unit": "s"}),
            ("Federation sync latency p99", [(f'histogram_quantile(0.99, sum by (peer, le) (rate(isthmus_federation_sync_latency_seconds_bucket{{peer=~"$destination"}}{rate_i})))', "{{peer}}")], {"unit": "s"}),
            ("Resyncs", [(f'sum by (peer) (increase(isthmus_federation_resyncs_total{{peer=~"$destination"}}{rate_i}))', "{{peer}}")], {}),
            ("Authorization denials by reason", [(f'sum by (reason) (rate(isthmus_authz_denials_total{{source_cluster=~"$source"}}{rate_i}))', "{{reason}}")], {"unit": "ops"}),
        ]),  # fmt: skip
        "failover.json": _dashboard("isthmus-failover", "Isthmus / Failover",
            "Where each service is served from, and when that moved: priorities, transitions, endpoint health.",
            [service], [
            ("Active priority by service", [('max by (service) (isthmus_active_priority{service=~"$service"})', "{{service}}")], {}),
            ("Failover transitions", [(f'sum by (service, from_priority, to_priority) (increase(isthmus_failover_transitions_total{{service=~"$service"}}{rate_i}))', "{{service}} {{from_priority}}→{{to_priority}}")], {}),
            ("Healthy endpoints by locality", [('sum by (service, locality) (isthmus_endpoints{service=~"$service",state="healthy"})', "{{service}} {{locality}}")], {}),
            ("Ejected or unhealthy endpoints", [('sum by (service, locality, state) (isthmus_endpoints{service=~"$service",state!="healthy"})', "{{service}} {{locality}} {{state}}")], {}),
            ("Traffic by destination cluster", [(f"sum by (destination_service, destination_cluster) (rate(isthmus_requests_total{{{svc}}}{rate_i}))", "{{destination_service}} → {{destination_cluster}}")], {"unit": "reqps"}),
            ("Retries and timeouts", [
                (f"sum by (destination_service) (rate(isthmus_retries_total{{{svc}}}{rate_i}))", "retries {{destination_service}}"),
                (f"sum by (destination_service) (rate(isthmus_timeouts_total{{{svc}}}{rate_i}))", "timeouts {{destination_service}}")], {"unit": "ops"}),
            ("Open circuit breakers", [(f"sum by (destination_service, destination_cluster) (isthmus_circuit_breakers_open{{{svc}}})", "{{destination_service}} → {{destination_cluster}}")], {}),
            ("Gateway errors by reason", [(f'sum by (destination_service, reason) (rate(isthmus_requests_total{{{svc},reason!=""}}{rate_i}))', "{{destination_service}} {{reason}}")], {"unit": "reqps"}),
        ]),  # fmt: skip
    }


def render(dashboard: dict[str, Any]) -> str:
    return json.dumps(dashboard, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> int:
    GRAFANA_DIR.mkdir(exist_ok=True)
    for name, dashboard in dashboards().items():
        (GRAFANA_DIR / name).write_text(render(dashboard))
        sys.stdout.write(f"wrote {GRAFANA_DIR / name}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
