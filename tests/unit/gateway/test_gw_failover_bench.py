"""`isthmus bench failover`'s real-mode arithmetic and its results file holding both modes."""

from __future__ import annotations

import json

from federation.bench._failover_real import Sample, measure
from federation.bench.failover import _write


def test_times_are_measured_from_the_fault_by_what_the_client_saw():
    fault = 100.0
    samples = [
        Sample(99.0, 99.01, True, "us-east-1a", "east-1"),  # before the fault: ignored
        Sample(99.99, 100.02, True, "us-east-1b", "east-1"),  # retried elsewhere, fast
        Sample(100.1, 101.1, True, "us-east-1b", "east-1"),  # waited a per-try timeout: slow
        Sample(100.5, 100.51, False, "", ""),  # a client error
        Sample(101.2, 101.21, True, "us-east-1b", "east-1"),
    ]
    result = measure(samples, fault, lambda s: s.zone == "us-east-1a")
    assert round(result["first_success_elsewhere_s"], 3) == 0.02
    assert round(result["steady_state_s"], 3) == 1.1
    assert result["client_errors"] == 1
    assert result["requests"] == 4


def test_each_mode_keeps_the_other_modes_results(tmp_path):
    path = tmp_path / "failover.json"
    path.write_text(json.dumps({"machine": "m", "date": "d", "mode": "pure-simulation", "results": {"a": 1}}))
    _write(path, "real", {"mode": "real-processes", "results": {"b": 2}})
    body = json.loads(path.read_text())
    assert body["pure"] == {"mode": "pure-simulation", "results": {"a": 1}}
    assert body["real"]["results"] == {"b": 2}
    _write(path, "pure", {"mode": "pure-simulation", "results": {"c": 3}})
    body = json.loads(path.read_text())
    assert body["pure"]["results"] == {"c": 3} and body["real"]["results"] == {"b": 2}
