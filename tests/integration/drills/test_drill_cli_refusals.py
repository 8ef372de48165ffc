"""`isthmus drill run` refuses bad input before anything starts: one line, exit 2, no demo brought up."""

from __future__ import annotations

import pytest

from tests.integration.drills.conftest import isthmus

GOOD_LOAD = """
[load]
from_cluster = "east-1"
service = "echo.demo"
"""


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('name = "x"\nduration_s = 10\n' + GOOD_LOAD + '[[faults]]\nkind = "meteor"\nat_s = 1\n',
         "faults[0].kind: unknown fault 'meteor'"),
        ('name = "x"\nduration_s = 10\n' + GOOD_LOAD + '[[faults]]\nkind = "kill-gateway"\nat_s = 30\ncluster = "east-1"\n',
         "faults[0].at_s: 30 is not a number in [0.0, 10]"),
        ('name = "x"\nduration_s = 10\n[topology]\nclusters = ["east-1", "mars-1"]\n' + GOOD_LOAD,
         "topology.clusters: 'mars-1' is not a cluster of the demo topology"),
        ('name = "x"\nduration_s = 10\n' + GOOD_LOAD + '[[faults]]\nkind = "partition"\nat_s = 1\ncluster = "east-1"\npeer = "pluto"\n',
         "faults[0].peer: 'pluto' is not a cluster of the topology"),
    ],
    ids=["unknown-fault", "time-outside-drill", "unknown-topology-cluster", "unknown-peer"],
)
def test_a_bad_scenario_is_one_line_and_exit_2_with_no_demo_started(tmp_path, body, expected):
    scenario = tmp_path / "bad.toml"
    scenario.write_text(body)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    result = isthmus("drill", "run", str(scenario), "--report", str(tmp_path / "reports"),
                     env={"TMPDIR": str(scratch)}, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"isthmus: error: {scenario}: ")
    assert expected in lines[0]
    assert list(scratch.iterdir()) == []  # no demo directory was made, so no demo was started
    assert not (tmp_path / "reports").exists()


def test_a_bad_scenario_among_good_ones_stops_all_of_them_before_the_first(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nduration_s = 10\n' + GOOD_LOAD + '[[faults]]\nkind = "meteor"\nat_s = 1\n')
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    result = isthmus("drill", "run", "zone-outage", str(bad), env={"TMPDIR": str(scratch)}, timeout=30)
    assert result.returncode == 2
    assert "unknown fault 'meteor'" in result.stderr
    assert list(scratch.iterdir()) == []


def test_attaching_to_a_directory_without_a_demo_is_refused(tmp_path):
    result = isthmus("drill", "run", "zone-outage", "--attach", str(tmp_path / "nothing"), timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"isthmus: error: --attach {tmp_path / 'nothing'}: no running demo there "
                                     f"(start one with `isthmus demo up --dir {tmp_path / 'nothing'}`)")


def test_an_unknown_drill_name_lists_the_shipped_ones(tmp_path):
    result = isthmus("drill", "run", "volcano", timeout=30)
    assert result.returncode == 2
    assert "volcano: no such scenario file or shipped drill (shipped: brownout, cert-expired" in result.stderr
