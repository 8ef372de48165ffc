"""A drill report is one self-contained HTML page (no external fetches) plus a JSON summary."""

from __future__ import annotations

import json

from scenarios.analysis import Sample, check
from scenarios.model import Scenario
from scenarios.report import DrillResult, write_report
from tests.unit.scenarios.test_scenario_model import BASE


def test_report_has_verdicts_plots_and_no_external_resources(tmp_path):
    scenario = Scenario.from_mapping({**BASE, "name": "z<b>"})
    samples = tuple(
        Sample(start_s=i / 10, latency_s=0.01, ok=not (20 <= i < 23), status=200, idempotent=True, zone="a" if i < 20 else "b")
        for i in range(60)
    )
    verdicts = (check("min_success_ratio", 0.999, 57 / 60, at_least=True),)
    result = DrillResult(scenario, samples, verdicts, {"time_to_failover_s": 0.3}, (("stop-endpoints", 2.0, 5.0),))
    json_path, html_path = write_report(result, tmp_path, machine="test box")
    summary = json.loads(json_path.read_text())
    assert summary["passed"] is False
    assert summary["idempotent_failures"] == 3
    page = html_path.read_text()
    assert page.count("<svg") == 3
    assert "z&lt;b&gt;" in page and "z<b>" not in page  # names are escaped
    assert "MISSED" in page
    # Nothing is fetched: no remote src/href/url() (XML namespace names are identifiers, not fetches).
    for fetch in ('src="http', "src='http", 'href="http', "url(http", "<link", "<script"):
        assert fetch not in page
