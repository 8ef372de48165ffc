"""Scenario files are validated before anything starts: each mistake is one line naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from scenarios.errors import ScenarioInvalid
from scenarios.model import Scenario

SHIPPED = sorted(Path(__file__).resolve().parents[3].joinpath("scenarios").glob("*.toml"))

BASE = {
    "name": "t",
    "duration_s": 10,
    "load": {"from_cluster": "east-1", "service": "echo.demo"},
    "faults": [{"kind": "stop-endpoints", "at_s": 2, "until_s": 5, "cluster": "east-1", "zone": "us-east-1a"}],
    "slo": {"min_success_ratio": 0.999},
}


def with_fault(**changes):
    fault = {**BASE["faults"][0], **changes}
    return {**BASE, "faults": [{k: v for k, v in fault.items() if v is not None}]}


def test_the_base_scenario_is_valid():
    s = Scenario.from_mapping(BASE)
    assert s.faults[0].kind == "stop-endpoints"
    assert s.faults[0].params == {"cluster": "east-1", "zone": "us-east-1a"}
    assert s.slo.min_success_ratio == 0.999


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (with_fault(kind="meteor"), "faults[0].kind: unknown fault 'meteor'"),
        (with_fault(at_s=11), "faults[0].at_s: 11 is not a number in [0.0, 10]"),
        (with_fault(until_s=1), "faults[0].until_s: 1 is not after at_s 2"),
        (with_fault(cluster="mars-1"), "faults[0].cluster: 'mars-1' is not a cluster of the topology"),
        (with_fault(zone="us-east-1c"), "faults[0].zone: 'us-east-1c' is not a zone of east-1"),
        (with_fault(delay_ms=5), "faults[0]: stop-endpoints does not take delay_ms"),
        ({**BASE, "load": {"from_cluster": "nowhere", "service": "echo.demo"}}, "load.from_cluster: 'nowhere'"),
        ({**BASE, "slo": {"max_happiness": 1}}, "slo: unknown SLO(s) max_happiness"),
        ({k: v for k, v in BASE.items() if k != "duration_s"}, "duration_s: missing"),
    ],
)
def test_bad_scenarios_are_refused_naming_the_field(raw, message):
    with pytest.raises(ScenarioInvalid) as info:
        Scenario.from_mapping(raw, source="x.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("x.toml: ")
    assert "\n" not in str(info.value)


def test_every_shipped_scenario_validates():
    names = {p.stem for p in SHIPPED}
    assert {"zone-outage", "region-outage", "gateway-loss", "partition", "registry-outage",
            "control-plane-restart", "cert-rotation", "brownout", "flapping"} <= names
    for path in SHIPPED:
        assert Scenario.from_toml(path).name == path.stem
