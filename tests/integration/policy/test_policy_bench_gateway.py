"""`isthmus bench policy`'s second table: two real gateways, access log on and off, CPU per request."""

from __future__ import annotations

import argparse
import json

from federation.bench import policy


def test_gateway_cpu_with_access_logging_on_and_off_is_measured(tmp_path, capsys):
    out = tmp_path / "policy.json"
    args = argparse.Namespace(out=str(out), services=2, rules=5, requests=200, seed=3, gateway_requests=300,
                              gateway_rounds=1, gateway_concurrency=4)
    assert policy.run(args) == 0
    body = json.loads(out.read_text())["gateway_access_log_cpu"]
    assert body["cpu_us_per_request_off"] > 0 and body["cpu_us_per_request_on"] > 0
    assert body["log_lines_written"] >= 300  # every timed request of the logging gateway left its line
    assert isinstance(body["goal_met"], bool)
    assert "access log on vs off" in capsys.readouterr().out
