"""`isthmus bench failover --pure` (the pure-simulation half), in a small configuration."""

from __future__ import annotations

import json

from federation.bench import failover
from federation.cli import main


def test_pure_bench_writes_results_and_meets_the_goals(tmp_path, capsys):
    out = tmp_path / "failover.json"
    code = main(
        [
            "bench",
            "failover",
            "--pure",
            "--repetitions",
            "2",
            "--horizon",
            "8",
            "--rate",
            "100",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    body = json.loads(out.read_text())
    assert "machine" in body and "date" in body
    body = body["pure"]  # the real-processes mode writes its results beside these, under "real"
    assert body["mode"] == "pure-simulation"
    assert set(body["results"]) == {"zone-loss", "cluster-loss", "blackhole"}
    for scenario, profiles in body["results"].items():
        isthmus = profiles["isthmus"]
        assert isthmus["goal_met"] is True, scenario
        assert isthmus["client_errors"] == 0
        assert len(isthmus["runs"]) == 2
        assert set(profiles) == {"isthmus", "envoy"}
    assert body["results"]["zone-loss"]["isthmus"]["steady_state_s"]["p99"] <= 1.0
    assert body["results"]["cluster-loss"]["isthmus"]["steady_state_s"]["p99"] <= 3.0
    # Envoy's defaults need the 15 s route timeout before anything moves off a dark cluster.
    assert body["results"]["cluster-loss"]["envoy"]["client_errors"] > 0
    assert "zone-loss" in capsys.readouterr().out


def test_real_mode_attached_to_no_demo_is_one_line(tmp_path, capsys):
    code = main(["bench", "failover", "--attach", str(tmp_path), "--out", str(tmp_path / "x.json")])
    assert code == 2
    err = capsys.readouterr().err
    assert err == (
        f"isthmus: error: --attach {tmp_path}: no running demo there "
        f"(start one with `isthmus demo up --dir {tmp_path}`)\n"
    )


def test_bad_numbers_are_one_line(tmp_path, capsys):
    assert main(["bench", "failover", "--pure", "--repetitions", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_percentile_ranks_never_reached_above_numbers():
    assert failover.percentile([0.2, None, 0.1], 50) == 0.2
    assert failover.percentile([0.2, None, 0.1], 99) is None
    assert failover.percentile([], 50) is None
