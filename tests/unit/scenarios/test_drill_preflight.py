"""Drills a runner cannot apply are refused before anything starts: new faults' fields, topology, attached demo."""

from __future__ import annotations

import pytest

from federation.demo.orchestrator import DemoState
from scenarios.errors import ScenarioInvalid
from scenarios.faults import preflight
from scenarios.model import Scenario
from scenarios.runner import shorten

BASE = {
    "name": "t",
    "duration_s": 10,
    "load": {"from_cluster": "east-2", "service": "echo.demo"},
    "slo": {"min_success_ratio": 0.999},
}


def scenario(*faults, **top):
    return Scenario.from_mapping({**BASE, **top, "faults": list(faults)}, source="x.toml")


def refused(raw_faults=(), **top) -> str:
    with pytest.raises(ScenarioInvalid) as info:
        scenario(*raw_faults, **top)
    message = str(info.value)
    assert message.startswith("x.toml: ") and "\n" not in message
    return message


def test_the_new_faults_validate():
    s = scenario(
        {"kind": "cert-rotation", "at_s": 2, "cluster": "west-1"},
        {"kind": "cert-expired", "at_s": 3, "until_s": 6, "cluster": "east-1"},
        {"kind": "link-latency", "at_s": 4, "until_s": 8, "cluster": "east-2", "peer": "east-1", "latency_ms": 100},
    )
    assert [f.kind for f in s.faults] == ["cert-rotation", "cert-expired", "link-latency"]
    assert s.faults[2].params == {"cluster": "east-2", "peer": "east-1", "latency_ms": 100}


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"kind": "link-latency", "at_s": 1, "cluster": "east-2", "peer": "east-1"}, "link-latency needs latency_ms"),
        ({"kind": "link-latency", "at_s": 1, "cluster": "east-2", "peer": "east-1", "latency_ms": 0},
         "faults[0].latency_ms: 0 is not a number in [1, 10000]"),
        ({"kind": "link-latency", "at_s": 1, "cluster": "east-2", "peer": "east-2", "latency_ms": 5},
         "faults[0].peer: 'east-2' is the cluster itself"),
        ({"kind": "link-loss", "at_s": 1, "cluster": "east-2", "peer": "west-1", "loss_percent": 150},
         "faults[0].loss_percent: 150 is not a number in [0.1, 100]"),
        ({"kind": "cert-expired", "at_s": 1, "cluster": "mars-1"}, "faults[0].cluster: 'mars-1' is not a cluster"),
        ({"kind": "cert-rotation", "at_s": 12, "cluster": "west-1"}, "faults[0].at_s: 12 is not a number in [0.0, 10]"),
        ({"kind": "cert-rotation", "at_s": 2, "cluster": "west-1", "hours": 1}, "cert-rotation does not take hours"),
    ],
)
def test_bad_new_faults_are_refused_naming_the_field(fault, message):
    assert message in refused([fault])


def test_a_topology_naming_an_unknown_cluster_is_refused():
    message = refused(topology={"demo": True, "clusters": ["east-1", "mars-1"]})
    assert "topology.clusters: 'mars-1' is not a cluster of the demo topology (east-1, east-2, west-1)" in message
    assert "topology: unknown field(s) regions" in refused(topology={"regions": ["x"]})


def test_a_fault_outside_the_chosen_topology_is_refused():
    fault = {"kind": "kill-gateway", "at_s": 1, "cluster": "west-1"}
    message = refused([fault], topology={"clusters": ["east-1", "east-2"]})
    assert "faults[0].cluster: 'west-1' is not a cluster of the topology (east-1, east-2)" in message


def attached(backend="sqlite", clusters=("east-1", "east-2", "west-1")) -> DemoState:
    return DemoState(
        dir="/tmp/demo", backend=backend, clusters=[{"name": c} for c in clusters],
        processes={f"{c}/gateway": {"pid": 1, "argv": [], "cluster": c} for c in clusters},
    )


def test_registry_down_on_an_attached_sqlite_demo_is_refused_before_it_starts():
    s = scenario({"kind": "registry-down", "at_s": 1, "until_s": 3, "cluster": "east-1"})
    with pytest.raises(ScenarioInvalid, match=r"registry-down\): needs a demo with --backend etcd \(the attached one uses sqlite\)"):
        preflight(s, attached())
    preflight(s, attached(backend="etcd"))  # accepted


def test_a_fault_on_a_cluster_the_attached_demo_lacks_is_refused():
    s = scenario({"kind": "cert-rotation", "at_s": 1, "cluster": "west-1"})
    with pytest.raises(ScenarioInvalid, match="the attached demo in /tmp/demo has no cluster west-1"):
        preflight(s, attached(clusters=("east-1", "east-2")))


def test_a_shortened_drill_keeps_its_faults_inside_it():
    s = scenario({"kind": "link-latency", "at_s": 4, "until_s": 8, "cluster": "east-2", "peer": "east-1",
                  "latency_ms": 50})
    short = shorten(s, 5)
    assert short.duration_s == 5
    assert (short.faults[0].at_s, short.faults[0].until_s) == (2, 4)


def test_an_expired_gateway_certificate_takes_its_whole_cluster_out_of_service():
    from scenarios.runner import affected_place

    state = DemoState(dir="/tmp/demo", backend="sqlite",
                      clusters=[{"name": "east-1", "region": "us-east", "zones": ["us-east-1a", "us-east-1b"]}])
    expired = scenario({"kind": "cert-expired", "at_s": 1, "cluster": "east-1"}).faults[0]
    slow = scenario({"kind": "link-latency", "at_s": 1, "cluster": "east-2", "peer": "east-1", "latency_ms": 9}).faults[0]
    assert affected_place(expired, state) == {"east-1"}
    assert affected_place(slow, state) == set()  # a slow link is not a reason to move traffic


def test_a_handler_for_sighup_is_seen_from_proc():
    import os
    import signal

    from scenarios.faults import catches

    previous = signal.signal(signal.SIGUSR2, lambda *_: None)
    try:
        assert catches(os.getpid(), signal.SIGUSR2)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert not catches(os.getpid(), signal.SIGUSR2) or previous not in (signal.SIG_DFL, signal.SIG_IGN)
    assert not catches(2**22 + 12345, signal.SIGHUP)  # no such process


def test_a_region_outage_measures_the_return_to_that_region():
    from scenarios.analysis import Sample
    from scenarios.runner import judge

    s = Scenario.from_mapping({
        "name": "r", "duration_s": 20, "load": {"from_cluster": "east-1", "service": "hello.demo"},
        "faults": [{"kind": "stop-region", "at_s": 5, "until_s": 12, "region": "eu-west"}],
        "slo": {"max_time_to_return_s": 5.0},
    })
    state = DemoState(dir="/d", backend="sqlite", clusters=[
        {"name": "east-1", "region": "us-east", "zones": ["us-east-1a", "us-east-1b"]},
        {"name": "west-1", "region": "eu-west", "zones": ["eu-west-1a"]}])
    served = lambda t: Sample(t, 0.01, True, 200, True, "west-1", "eu-west-1a")  # noqa: E731
    failed = lambda t: Sample(t, 0.01, False, 503, True, "", "", "no-healthy-endpoint")  # noqa: E731
    samples = [served(t / 10) for t in range(40, 50)] + [failed(t / 10) for t in range(50, 123)] + \
              [served(t / 10) for t in range(123, 140)]
    verdicts, measured = judge(s, samples, state)
    assert measured["time_to_return_s"] == pytest.approx(0.3)
    assert [(v.slo, v.held) for v in verdicts] == [("max_time_to_return_s", True)]
