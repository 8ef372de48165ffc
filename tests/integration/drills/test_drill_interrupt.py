"""Ctrl-C during a drill restores every fault and stops what the drill started (real demo, real signals)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from federation.demo import processes
from scenarios.faults import IPTABLES_COMMENT, cgroup2_root, drill_rules
from tests.integration.drills.conftest import demo_state

pytestmark = pytest.mark.slow

SCENARIO = """
name = "interrupted"
description = "faults that stay applied until Ctrl-C"
duration_s = 120

[load]
from_cluster = "east-1"
service = "echo.demo"
rate_per_s = 20

[[faults]]
kind = "stop-endpoints"
at_s = 0.2
cluster = "east-1"
zone = "us-east-1a"

[[faults]]
kind = "link-latency"
at_s = 0.2
until_s = 100
cluster = "east-2"
peer = "east-1"
latency_ms = 50
"""


async def wait_for(predicate, what: str, deadline_s: float = 30.0) -> None:
    with trio.move_on_after(deadline_s):
        while not predicate():  # noqa: ASYNC110 - another process: poll
            await trio.sleep(0.05)
        return
    raise AssertionError(f"timed out waiting for {what}")


def drill_cgroups() -> list[str]:
    root = cgroup2_root()
    return [] if root is None else [p.name for p in root.iterdir() if p.name.startswith(IPTABLES_COMMENT)]


async def test_ctrl_c_restores_every_fault_of_an_attached_demo(drills_demo: Path, tmp_path: Path):
    scenario = tmp_path / "interrupted.toml"
    scenario.write_text(SCENARIO)
    endpoint = "east-1/endpoint/echo.demo/us-east-1a"
    before = demo_state(drills_demo)["processes"][endpoint]["pid"]
    log = open(tmp_path / "drill.log", "w")  # noqa: SIM115, ASYNC230 - the child's stderr, closed below
    drill = await trio.lowlevel.open_process(
        [sys.executable, "-m", "federation.cli", "drill", "run", str(scenario), "--attach", str(drills_demo),
         "--report", str(tmp_path / "reports")],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"},
    )
    try:
        # Both faults in force: the endpoint is dead and the relay's nat rules are in place.
        await wait_for(lambda: not processes.alive(before) and any(r.startswith("nat:") for r in drill_rules()),
                       "both faults to be applied")
        assert drill.poll() is None
        drill.send_signal(signal.SIGINT)
        await wait_for(lambda: drill.poll() is not None, "the drill to exit")
    finally:
        if drill.poll() is None:
            drill.kill()
        log.close()
    output = (tmp_path / "drill.log").read_text()
    assert drill.returncode == 130, output
    assert "isthmus: interrupted" in output
    assert drill_rules() == []  # no iptables rule with the drill's comment is left behind
    assert drill_cgroups() == []
    restored = demo_state(drills_demo)["processes"][endpoint]["pid"]
    assert restored != before and processes.alive(restored)
    # The restored endpoint serves again, and east-1's traffic comes back to its own zone.
    east = next(c for c in demo_state(drills_demo)["clusters"] if c["name"] == "east-1")

    async def served_by_own_zone() -> bool:
        async with httpx.AsyncClient(timeout=2) as client:
            try:
                response = await client.get(f"http://{east['outbound']}/", headers={"host": "echo.demo"})
            except httpx.HTTPError:
                return False
            return response.status_code == 200 and response.headers.get("x-demo-zone") == "us-east-1a"

    with trio.fail_after(30):
        while not await served_by_own_zone():  # noqa: ASYNC110 - polling another process
            await trio.sleep(0.1)


async def test_ctrl_c_stops_the_demo_the_drill_started(tmp_path: Path):
    scenario = tmp_path / "own.toml"
    # One cluster is enough here (and quick to bring up); only the endpoint fault.
    head, _, rest = SCENARIO.replace('name = "interrupted"', 'name = "own"').partition("[load]")
    scenario.write_text(head + '[topology]\nclusters = ["east-1"]\n\n[load]' + rest.split("[[faults]]\nkind = \"link-latency\"")[0])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    log = open(tmp_path / "drill.log", "w")  # noqa: SIM115, ASYNC230 - the child's stderr, closed below
    drill = await trio.lowlevel.open_process(
        [sys.executable, "-m", "federation.cli", "drill", "run", str(scenario), "--report", str(tmp_path / "reports")],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200", "TMPDIR": str(scratch)},
    )
    pids: list[int] = []
    try:

        def fault_applied() -> bool:
            if drill.poll() is not None:
                raise AssertionError(f"the drill ended early: {(tmp_path / 'drill.log').read_text()}")
            for state_file in scratch.glob("isthmus-drill-own-*/demo.json"):
                try:
                    state = demo_state(state_file.parent)
                except ValueError:
                    return False
                role = state["processes"].get("east-1/endpoint/echo.demo/us-east-1a")
                gateway = state["processes"].get("east-1/gateway")
                if role and gateway and not processes.alive(role["pid"]):
                    pids[:] = [p["pid"] for p in state["processes"].values()]
                    return True
            return False

        await wait_for(fault_applied, "the drill's own demo to be up with the fault applied", deadline_s=90)
        drill.send_signal(signal.SIGINT)
        await wait_for(lambda: drill.poll() is not None, "the drill to exit")
    finally:
        if drill.poll() is None:
            drill.kill()
        log.close()
    output = (tmp_path / "drill.log").read_text()
    assert drill.returncode == 130, output
    assert pids and not any(processes.alive(pid) for pid in pids)
    assert not list(scratch.glob("isthmus-drill-own-*/demo.json"))  # the demo's state is gone with it
