"""`isthmus bench policy` runs end to end on a small table and writes the figures it prints."""

from __future__ import annotations

import argparse
import json

from federation.bench import policy


def test_the_policy_benchmark_writes_its_results(tmp_path, capsys):
    out = tmp_path / "policy.json"
    args = argparse.Namespace(out=str(out), services=5, rules=20, requests=2000, seed=3)
    assert policy.run(args) == 0
    body = json.loads(out.read_text())
    assert (body["services"], body["rules_per_service"], body["requests"]) == (5, 20, 2000)
    assert {"p50_us", "p90_us", "p99_us", "matched_fraction"} <= set(body["route_evaluation"])
    assert {"p50_us", "p99_us"} <= set(body["access_log_format"])
    assert 0.5 < body["route_evaluation"]["matched_fraction"] <= 1.0
    assert "machine" in body and "date" in body
    assert "route evaluation" in capsys.readouterr().out


def test_every_generated_rule_is_reachable_and_every_kind_is_hit():
    import random

    rules = policy.service_rules(0, 100, random.Random(1))
    from gateway.policy.table import RouteTable

    table = RouteTable.compile({"svc0.bench": rules})
    rng = random.Random(2)
    hit = {table.match("svc0.bench", policy.request_for(rules, rng), rng).rule for _ in range(3000)}
    assert len(hit - {None}) > 80


def test_impossible_sizes_are_a_one_line_usage_error(tmp_path):
    import pytest

    from federation.errors import UsageError

    args = argparse.Namespace(out=str(tmp_path / "p.json"), services=0, rules=20, requests=2000, seed=3)
    with pytest.raises(UsageError, match="^--services: 0 is less than 1$"):
        policy.run(args)
