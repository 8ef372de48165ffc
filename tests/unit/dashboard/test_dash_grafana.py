"""The Grafana dashboards are importable JSON, generated from `grafana_build`, with a datasource variable."""

from __future__ import annotations

import json

from federation.dashboard.grafana_build import GRAFANA_DIR, dashboards, render
from federation.dashboard.promconfig import render_scrape_config


def test_committed_dashboards_match_their_source():
    built = dashboards()
    assert sorted(built) == sorted(p.name for p in GRAFANA_DIR.glob("*.json"))
    for name, dashboard in built.items():
        assert (GRAFANA_DIR / name).read_text() == render(dashboard), f"run python -m federation.dashboard.grafana_build ({name})"


def test_each_dashboard_is_importable_and_uses_the_datasource_variable():
    uids = set()
    for path in GRAFANA_DIR.glob("*.json"):
        board = json.loads(path.read_text())
        assert board["schemaVersion"] >= 36
        assert board["uid"] not in uids
        uids.add(board["uid"])
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)) and board["panels"]
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["targets"] and all(t["expr"] and t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    assert {"isthmus-mesh-overview", "isthmus-gateway", "isthmus-cluster-pair", "isthmus-failover"} <= uids


def test_scrape_config_names_the_rules_and_both_jobs():
    text = render_scrape_config(["127.0.0.1:15000"], ["127.0.0.1:15010"], rules_file="/x/rules.yml", scrape_interval="1s")
    assert 'targets: ["127.0.0.1:15000"]' in text and 'targets: ["127.0.0.1:15010"]' in text
    assert '- "/x/rules.yml"' in text and "scrape_interval: 1s" in text and "${" not in text and "placeholder" in text
