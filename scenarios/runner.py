"""The drill runner: attach to (or bring up) the demo, run load, play the fault timeline, judge the SLOs.

One trio nursery holds the load generator, the fault timeline and the progress line. Whatever happens
(an SLO missed, a fault failing, Ctrl-C), `finally` restores every applied fault and stops a demo the
drill started itself; an attached demo is left running as it was found.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import trio

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
from scenarios.faults import Injector
from scenarios.loadgen import LoadStats, run_load
from scenarios.model import Fault, Scenario
from scenarios.report import DrillResult

WARMUP_S = 1.0


def affected_place(fault: Fault, state: DemoState) -> set[str]:
    """The zones and clusters a fault takes out of service (what traffic must move away from)."""
    p = fault.params
    if fault.kind in ("stop-endpoints", "brownout", "flapping"):
        return {p["zone"]} if "zone" in p else {p["cluster"], *next(c["zones"] for c in state.clusters if c["name"] == p["cluster"])}
    if fault.kind == "kill-gateway":
        return {p["cluster"]}
    if fault.kind in ("partition", "link-loss"):
        return {p["peer"]}
    if fault.kind == "stop-region":
        clusters = [c for c in state.clusters if c["region"] == p["region"]]
        return {c["name"] for c in clusters} | {z for c in clusters for z in c["zones"]}
    return set()


def serving_before(samples: list[Sample], at_s: float, window_s: float = 1.0) -> set[str]:
    served = set()
    for s in samples:
        if at_s - window_s <= s.start_s < at_s and s.ok:
            served |= {s.zone, s.cluster}
    return served


def judge(scenario: Scenario, samples: list[Sample], state: DemoState) -> tuple[tuple[Verdict, ...], dict]:
    measured: dict = {}
    failovers, firsts, returns, during = [], [], [], []
    home_cluster = scenario.load.from_cluster
    home_zones = set(next(c["zones"] for c in state.clusters if c["name"] == home_cluster))
    for fault in scenario.faults:
        place = affected_place(fault, state)
        end = fault.until_s if fault.until_s is not None else scenario.duration_s
        during += [s.latency_s * 1000 for s in samples if fault.at_s <= s.start_s < end]
        if not place or not (place & serving_before(samples, fault.at_s)):
            continue  # this fault did not touch where the traffic was going
        failovers.append(time_to_failover(samples, fault.at_s, place, fault.until_s))
        firsts.append(time_to_first_success_elsewhere(samples, fault.at_s, place))
        if fault.until_s is not None and place & (home_zones | {home_cluster}):
            returns.append(time_to_return(samples, fault.until_s, home_zones | {home_cluster}))
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


async def run_drill(scenario: Scenario, *, attach: Path | None = None, backend: str = "sqlite",
                    show_progress: bool = True) -> DrillResult:
    """Run one drill end to end and return its result (the caller writes the report)."""
    from rich.console import Console
    from rich.live import Live

    console = Console(stderr=True)
    needs_etcd = any(f.kind == "registry-down" for f in scenario.faults)
    own_dir = None
    if attach is not None:
        state = DemoState.load(attach.resolve())
        if state is None:
            raise DrillError(f"--attach {attach}: no running demo there (start one with `isthmus demo up --dir {attach}`)")
        if needs_etcd and state.backend != "etcd":
            raise DrillError(f"{scenario.name}: registry-down needs a demo started with --backend etcd")
        demo_dir = attach
    else:
        own_dir = Path(tempfile.mkdtemp(prefix=f"isthmus-drill-{scenario.name}-"))
        demo_dir = own_dir
        console.log(f"bringing up a demo for the drill in {own_dir}")
        state = await demo_up(own_dir, "etcd" if needs_etcd else backend)
    caller = state.cluster(scenario.load.from_cluster)
    if caller is None:
        raise DrillError(f"{scenario.name}: the demo has no cluster {scenario.load.from_cluster}")
    samples: list[Sample] = []
    stats = LoadStats()
    injector = Injector(demo_dir, state)
    windows = []
    try:
        start = trio.current_time() + WARMUP_S
        async with trio.open_nursery() as nursery:
            await nursery.start(run_load, scenario.load, caller["outbound"], scenario.duration_s + WARMUP_S, samples, stats)

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
                        injector.restore(fault)

            nursery.start_soon(timeline)
            if show_progress:
                with Live(console=console, refresh_per_second=4, transient=True) as live:
                    while trio.current_time() < start + scenario.duration_s:
                        now = trio.current_time() - start
                        phase = "warm-up" if now < 0 else ("fault" if injector.applied else "steady")
                        live.update(f"[bold]{scenario.name}[/bold] t={max(0.0, now):5.1f}s {phase:8} {stats.line(now + WARMUP_S)}")
                        await trio.sleep(0.25)
    finally:
        with trio.CancelScope(shield=True):
            injector.restore_all()
            if own_dir is not None:
                await demo_down(own_dir)
    # Samples are timed from the load's start; shift them to the drill's clock (after the warm-up).
    shifted = [
        Sample(start_s=s.start_s - WARMUP_S, latency_s=s.latency_s, ok=s.ok, status=s.status, idempotent=s.idempotent,
               cluster=s.cluster, zone=s.zone, reason=s.reason)
        for s in samples if s.start_s >= WARMUP_S
    ]
    verdicts, measured = judge(scenario, shifted, state)
    for f in scenario.faults:
        windows.append((f.kind, f.at_s, f.until_s if f.until_s is not None else scenario.duration_s))
    return DrillResult(scenario, tuple(shifted), verdicts, measured, tuple(windows))


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
