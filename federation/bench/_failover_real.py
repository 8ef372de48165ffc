"""`isthmus bench failover` in real mode: faults against one running demo, measured from a client.

On the demo topology (a running one with `--attach DIR`, else one brought up in a temporary
directory and taken down at the end), each fault is applied `--reps` times:

- zone-loss: SIGKILL of east-1's `echo.demo` endpoints in us-east-1a, GETs from east-1;
- cluster-loss: SIGKILL of east-1's gateway, GETs from east-2 whose own `echo.demo` endpoint is
  stopped for the whole scenario (so east-2 relies on east-1, its same-region peer; west-1 is next);
- blackhole: SIGSTOP of the us-east-1a endpoints (connections accepted, nothing answered).

Per repetition: fault, measure for a window, restore (restart or SIGCONT), then wait until the
traffic is steady at home again (the last second all successful and >= 90 % served from home)
before the next fault. Measured from the client's samples, in seconds from the fault:
- first success elsewhere: the first successful response served from outside the faulted place;
- steady state: the end of the last request after the fault that failed, took longer than
  `SLOW_S`, or was served by the faulted place (0 when there was none);
- client errors: responses that were not 2xx (every request is a GET: idempotent).
"""

from __future__ import annotations

import signal
import tempfile
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from federation.demo import processes
from federation.errors import FederationError

SLOW_S = 0.25  # the drills' p99 bound during a fault; slower means a try waited on the fault
WINDOWS_S = {"zone-loss": 3.0, "cluster-loss": 6.0, "blackhole": 6.0}
HOME_DEADLINE_S = 60.0


@attrs.define
class Sample:
    start: float
    end: float
    ok: bool
    zone: str
    cluster: str


class Loader:
    """GETs of `echo.demo` at a fixed rate through one cluster's outbound listener."""

    def __init__(self, outbound: str, rate_per_s: float, concurrency: int = 16) -> None:
        self.outbound = outbound
        self.rate_per_s = rate_per_s
        self.concurrency = concurrency
        self.samples: list[Sample] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        slots = trio.Semaphore(self.concurrency)
        async with httpx.AsyncClient(base_url=f"http://{self.outbound}", limits=limits, timeout=10.0,
                                     trust_env=False) as client, trio.open_nursery() as nursery:

            async def one() -> None:
                start = trio.current_time()
                ok, zone, cluster = False, "", ""
                try:
                    response = await client.get("/bench", headers={"host": "echo.demo"})
                    ok = 200 <= response.status_code < 300
                    zone = response.headers.get("x-demo-zone", "")
                    cluster = response.headers.get("x-isthmus-cluster", "")
                except httpx.HTTPError:
                    pass
                finally:
                    slots.release()
                self.samples.append(Sample(start, trio.current_time(), ok, zone, cluster))

            task_status.started()
            interval = 1.0 / self.rate_per_s
            next_at = trio.current_time()
            while True:
                await trio.sleep_until(next_at)
                next_at += interval
                await slots.acquire()
                nursery.start_soon(one)

    def home_steady(self, now: float, home: Any) -> bool:
        window = [s for s in self.samples if s.end >= now - 1.0]
        if len(window) < 0.5 * self.rate_per_s:
            return False
        return all(s.ok for s in window) and sum(home(s) for s in window) >= 0.9 * len(window)


def measure(samples: list[Sample], fault_at: float, faulted: Any) -> dict[str, Any]:
    after = [s for s in samples if s.end >= fault_at]
    elsewhere = [s.end for s in after if s.ok and not faulted(s)]
    bad = [s.end for s in after if not s.ok or s.end - s.start > SLOW_S or (s.start >= fault_at and faulted(s))]
    return {
        "first_success_elsewhere_s": None if not elsewhere else max(0.0, min(elsewhere) - fault_at),
        "steady_state_s": 0.0 if not bad else max(bad) - fault_at,
        "client_errors": sum(1 for s in after if not s.ok),
        "requests": len(after),
    }


async def wait_home(loader: Loader, home: Any) -> float | None:
    started = trio.current_time()
    with trio.move_on_after(HOME_DEADLINE_S):
        while not loader.home_steady(trio.current_time(), home):  # noqa: ASYNC110 - polls the load task's samples
            await trio.sleep(0.2)
        return trio.current_time() - started
    return None


async def run_scenario(injector: Any, state: Any, scenario: str, reps: int, rate: float,
                       progress: Any) -> list[dict[str, Any]]:
    east1, east2 = state.cluster("east-1"), state.cluster("east-2")
    zone_roles = injector.endpoint_roles({"cluster": "east-1", "zone": "us-east-1a", "service": "echo.demo"})
    east2_echo = injector.endpoint_roles({"cluster": "east-2", "service": "echo.demo"})
    if scenario == "cluster-loss":
        injector.kill(east2_echo)
        await injector.wait_dead(east2_echo)
        loader = Loader(east2["outbound"], rate)

        def home(s: Sample) -> bool:
            return s.cluster == "east-1"
    else:
        loader = Loader(east1["outbound"], rate)

        def home(s: Sample) -> bool:
            return s.zone == "us-east-1a"
    runs = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(loader.run)
            if await wait_home(loader, home) is None:
                raise FederationError(f"bench failover: {scenario}: traffic never settled at home before the first fault")
            for rep in range(reps):
                faulted = zone_roles if scenario != "cluster-loss" else ["east-1/gateway"]
                if not all(processes.alive(state.processes[r]["pid"]) for r in faulted):
                    raise FederationError(f"bench failover: {scenario}: {', '.join(faulted)} not running before the fault")
                fault_at = trio.current_time()
                if scenario == "zone-loss":
                    injector.kill(zone_roles)
                elif scenario == "blackhole":
                    injector.kill(zone_roles, signal.SIGSTOP)
                else:
                    injector.kill(["east-1/gateway"])
                await trio.sleep(WINDOWS_S[scenario])
                result = measure(loader.samples, fault_at, home)  # home is the faulted place
                if scenario == "blackhole":
                    injector.kill(zone_roles, signal.SIGCONT)
                else:
                    roles = zone_roles if scenario == "zone-loss" else ["east-1/gateway"]
                    await injector.wait_dead(roles)
                    injector.restart(roles)
                    await trio.sleep(1.0)
                    # Other programs on these loopback addresses can take a port while it is free.
                    result["restart_failed"] = [r for r in roles
                                                if not processes.alive(state.processes[r]["pid"])]
                result["back_home_s"] = await wait_home(loader, home)
                runs.append(result)
                progress(scenario, rep, result)
            nursery.cancel_scope.cancel()
    finally:
        if scenario == "cluster-loss":
            injector.restart(east2_echo)
        if scenario == "blackhole":
            injector.kill(zone_roles, signal.SIGCONT)
    return runs


async def run_real(attach: str | None, reps: int, rate: float, progress: Any) -> dict[str, list[dict[str, Any]]]:
    from federation.demo.orchestrator import DemoState, demo_down, demo_up
    from scenarios.faults import Injector

    temp = None
    if attach:
        directory = Path(attach)
        state = DemoState.load(directory)
        if state is None or not any(processes.alive(pid) for pid in state.all_pids()):
            from federation.errors import UsageError

            raise UsageError(f"--attach {attach}: no running demo there (start one with `isthmus demo up --dir {attach}`)")
    else:
        temp = tempfile.TemporaryDirectory(prefix="isthmus-bench-failover-")
        directory = Path(temp.name) / "demo"
        state = await demo_up(directory, bare=False)
    try:
        injector = Injector(directory, state)
        return {scenario: await run_scenario(injector, state, scenario, reps, rate, progress)
                for scenario in WINDOWS_S}
    finally:
        if temp is not None:
            await demo_down(directory)
            temp.cleanup()
