"""The drill runner: attach to (or bring up) the demo, run load, play the fault timeline, judge the SLOs.

One trio nursery holds the load generator, the fault timeline and the progress line. Whatever happens
(an SLO missed, a fault failing, Ctrl-C or SIGTERM), `finally` restores every applied fault and stops a
demo the drill started itself; an attached demo is left running as it was found. Before anything starts,
`preflight` (and `check_attached` for `--attach`) refuses a drill this machine or demo cannot run.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from pathlib import Path

import trio

from federation.demo import processes
from federation.demo.orchestrator import DemoState, demo_down, demo_up
from scenarios.analysis import (
    Sample,
    Verdict,
    check,
    percentile,
    time_to_failover,
    time_to_first_success_elsewhere,
    time_to_return,
)
from scenarios.errors import DrillError
from scenarios.faults import Injector, preflight
from scenarios.loadgen import LoadStats, run_load
from scenarios.model import DEMO_CLUSTERS, Fault, Scenario
from scenarios.report import DrillResult

WARMUP_S = 1.0


def affected_place(fault: Fault, state: DemoState) -> set[str]:
    """The zones and clusters a fault takes out of service (what traffic must move away from)."""
    p = fault.params
    if fault.kind in ("stop-endpoints", "brownout", "flapping"):
        return {p["zone"]} if "zone" in p else {p["cluster"], *next(c["zones"] for c in state.clusters if c["name"] == p["cluster"])}
    if fault.kind in ("kill-gateway", "cert-expired"):
        return {p["cluster"]}
    if fault.kind in ("partition", "link-loss"):
        return {p["peer"]}
    if fault.kind == "stop-region":
        clusters = [c for c in state.clusters if c["region"] == p["region"]]
        return {c["name"] for c in clusters} | {z for c in clusters for z in c["zones"]}
    return set()  # link-latency, cert-rotation, registry-down, control-restart: traffic should stay put


def serving_before(samples: list[Sample], at_s: float, window_s: float = 1.0) -> set[str]:
    served = set()
    for s in samples:
        if at_s - window_s <= s.start_s < at_s and s.ok:
            served |= {s.zone, s.cluster}
    return served


def judge(scenario: Scenario, samples: list[Sample], state: DemoState) -> tuple[tuple[Verdict, ...], dict]:
    measured: dict = {}
    failovers, firsts, returns, during = [], [], [], []
    for fault in scenario.faults:
        place = affected_place(fault, state)
        end = fault.until_s if fault.until_s is not None else scenario.duration_s
        during += [s.latency_s * 1000 for s in samples if fault.at_s <= s.start_s < end]
        before = serving_before(samples, fault.at_s)
        if not place or not (place & before):
            continue  # this fault did not touch where the traffic was going
        failovers.append(time_to_failover(samples, fault.at_s, place, fault.until_s))
        firsts.append(time_to_first_success_elsewhere(samples, fault.at_s, place))
        if fault.until_s is not None:
            # Back to where the fault took the traffic from (the caller's own zone, or the only region).
            returns.append(time_to_return(samples, fault.until_s, place & before))
    worst = lambda values: None if not values or None in values else max(values)  # noqa: E731
    measured["time_to_failover_s"] = worst(failovers)
    measured["time_to_first_success_elsewhere_s"] = worst(firsts)
    measured["time_to_return_s"] = worst(returns)
    measured["p99_during_fault_ms"] = percentile(during, 99) if during else None
    ok = sum(s.ok for s in samples)
    measured["success_ratio"] = ok / len(samples) if samples else None
    measured["idempotent_failures"] = sum(1 for s in samples if s.idempotent and not s.ok)
    slo = scenario.slo
    verdicts = [
        check("min_success_ratio", slo.min_success_ratio, measured["success_ratio"], at_least=True),
        check("max_idempotent_failures", slo.max_idempotent_failures, measured["idempotent_failures"]),
        check("max_time_to_failover_s", slo.max_time_to_failover_s, measured["time_to_failover_s"]) if failovers else None,
        check("max_time_to_return_s", slo.max_time_to_return_s, measured["time_to_return_s"]) if returns else None,
        check("max_p99_during_fault_ms", slo.max_p99_during_fault_ms, measured["p99_during_fault_ms"]),
    ]
    return tuple(v for v in verdicts if v is not None), measured


def check_attached(scenario: Scenario, attach: Path) -> DemoState:
    """The running demo in `attach`, refused (one line) when it cannot host `scenario`."""
    state = DemoState.load(attach.resolve())
    if state is None or not any(processes.alive(pid) for pid in state.all_pids()):
        raise DrillError(f"--attach {attach}: no running demo there (start one with `isthmus demo up --dir {attach}`)")
    missing = [name for name in scenario.clusters if state.cluster(name) is None]
    if missing:
        raise DrillError(f"{scenario.name}: the demo in {attach} has no cluster {', '.join(missing)}")
    preflight(scenario, state)
    return state


def needs_etcd(scenario: Scenario) -> bool:
    return any(f.kind == "registry-down" for f in scenario.faults)


async def run_drill(scenario: Scenario, *, attach: Path | None = None, backend: str = "sqlite",
                    show_progress: bool = True) -> DrillResult:
    """Run one drill end to end and return its result (the caller writes the report).

    SIGINT and SIGTERM end the drill early: every applied fault is restored and a demo the drill started
    is stopped (a second signal during that cleanup is ignored), then `KeyboardInterrupt` is raised.
    """
    from rich.console import Console
    from rich.live import Live

    console = Console(stderr=True)
    own_dir = None
    state: DemoState | None = None
    injector: Injector | None = None
    samples: list[Sample] = []
    stats = LoadStats()
    interrupted: list[int] = []
    played = False
    preflight(scenario)
    if attach is not None:
        state = check_attached(scenario, attach)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        drill_scope = trio.CancelScope()

        async def watch_signals() -> None:
            async for signum in signals:
                if not interrupted:
                    console.log(f"{signal.Signals(signum).name}: restoring every fault and stopping what the drill started")
                    interrupted.append(signum)
                    drill_scope.cancel()
                # Later signals are swallowed: the cleanup below must run to its end.

        async with trio.open_nursery() as guard:
            guard.start_soon(watch_signals)
            try:
                with drill_scope:
                    if state is None:
                        own_dir = Path(tempfile.mkdtemp(prefix=f"isthmus-drill-{scenario.name}-"))
                        chosen = "etcd" if needs_etcd(scenario) else backend
                        console.log(f"bringing up a demo ({chosen} registry) for the drill in {own_dir}")
                        clusters = () if len(scenario.clusters) == len(DEMO_CLUSTERS) else tuple(scenario.clusters)
                        state = await demo_up(own_dir, chosen, clusters=clusters)
                    demo_dir = Path(state.dir)
                    caller = state.cluster(scenario.load.from_cluster)
                    if caller is None:
                        raise DrillError(f"{scenario.name}: the demo has no cluster {scenario.load.from_cluster}")
                    injector = Injector(demo_dir, state)
                    await _play(scenario, caller["outbound"], injector, samples, stats, console,
                                Live if show_progress else None)
                    played = True
            finally:
                with trio.CancelScope(shield=True):
                    try:
                        if injector is not None:
                            await injector.restore_all()
                    finally:
                        if own_dir is not None:
                            await demo_down(own_dir)
                            if played or interrupted:
                                shutil.rmtree(own_dir, ignore_errors=True)
                            else:  # something broke: keep the demo's logs to read
                                console.log(f"the drill's demo logs are kept in {own_dir / 'logs'}")
                guard.cancel_scope.cancel()
    if interrupted:
        raise KeyboardInterrupt
    assert state is not None and injector is not None
    # Samples are timed from the load's start; shift them to the drill's clock (after the warm-up).
    shifted = [
        Sample(start_s=s.start_s - WARMUP_S, latency_s=s.latency_s, ok=s.ok, status=s.status, idempotent=s.idempotent,
               cluster=s.cluster, zone=s.zone, reason=s.reason)
        for s in samples if s.start_s >= WARMUP_S
    ]
    verdicts, measured = judge(scenario, shifted, state)
    if injector.notes:
        measured["notes"] = list(injector.notes)
    windows = [(f.kind, f.at_s, f.until_s if f.until_s is not None else scenario.duration_s) for f in scenario.faults]
    return DrillResult(scenario, tuple(shifted), verdicts, measured, tuple(windows))


async def _play(scenario: Scenario, outbound: str, injector: Injector, samples: list[Sample], stats: LoadStats,
                console, live_class) -> None:
    """The load, the fault timeline and the progress line, in one nursery."""
    start = trio.current_time() + WARMUP_S
    async with trio.open_nursery() as nursery:

        async def load_then_stop(task_status=trio.TASK_STATUS_IGNORED) -> None:
            # The load is the drill: when it ends, so do the timeline, fault tasks and relays.
            await run_load(scenario.load, outbound, scenario.duration_s + WARMUP_S, samples, stats,
                           task_status=task_status)
            nursery.cancel_scope.cancel()

        await nursery.start(load_then_stop)

        async def timeline() -> None:
            events = sorted(
                [(f.at_s, "apply", f) for f in scenario.faults]
                + [(f.until_s, "restore", f) for f in scenario.faults if f.until_s is not None],
                key=lambda e: (e[0], e[1] == "apply"),
            )
            for at, action, fault in events:
                await trio.sleep_until(start + at)
                if action == "apply":
                    console.log(f"t={at:g}s fault: {fault.kind} {dict(fault.params)}")
                    await injector.apply(fault, nursery)
                else:
                    console.log(f"t={at:g}s restore: {fault.kind}")
                    await injector.restore(fault)

        nursery.start_soon(timeline)
        if live_class is not None:
            with live_class(console=console, refresh_per_second=4, transient=True) as live:
                while trio.current_time() < start + scenario.duration_s:
                    now = trio.current_time() - start
                    phase = "warm-up" if now < 0 else ("fault" if injector.applied else "steady")
                    live.update(f"[bold]{scenario.name}[/bold] t={max(0.0, now):5.1f}s {phase:8} {stats.line(now + WARMUP_S)}")
                    await trio.sleep(0.25)


def shipped_scenarios() -> list[Path]:
    return sorted(Path(__file__).parent.glob("*.toml"))


def find_scenario(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.exists():
        return path
    for candidate in shipped_scenarios():
        if candidate.stem == name_or_path or candidate.name == path.name:
            return candidate
    names = ", ".join(p.stem for p in shipped_scenarios())
    raise DrillError(f"{name_or_path}: no such scenario file or shipped drill (shipped: {names})")




def shorten(scenario: Scenario, duration_s: float) -> Scenario:
    """The same drill in `duration_s` seconds: every fault time scaled by the same factor (for CI)."""
    import attrs

    if duration_s >= scenario.duration_s:
        return scenario
    factor = duration_s / scenario.duration_s
    faults = tuple(
        attrs.evolve(f, at_s=f.at_s * factor, until_s=None if f.until_s is None else f.until_s * factor)
        for f in scenario.faults
    )
    return attrs.evolve(scenario, duration_s=duration_s, faults=faults)
