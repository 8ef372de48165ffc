"""`isthmus bench failover`: time to fail over, on real processes (default) or through the pure logic (`--pure`).

Real mode (`federation.bench._failover_real`): zone loss, cluster (gateway) loss and blackhole
against one running demo (`--attach DIR`, else a demo brought up for the run), `--reps` times each
(default 20), measured from a client's GETs. Both modes write `benchmarks/results/failover.json`,
each under its own key (`real`, `pure`), keeping the other mode's last results.

Pure mode, below:

Three faults, each `--repetitions` times (default 20) at `--rate` requests/s (default 200), on the
demo topology of DESIGN with the caller in east-1/us-east-1a (`gateway.lb.testing`):

- zone loss: the three `echo.demo` endpoints of the caller's zone die (connections refused);
- cluster loss: east-2, which serves `hello.demo` at P1, goes dark, gateway included (nothing
  answers; west-1 at P2 is healthy);
- blackhole: the caller's zone keeps accepting connections but never answers.

Per run: the time from the fault to the first success elsewhere (a try that succeeded on a host
the fault did not touch) and to steady state (after which no new try goes to a faulted host), and
the requests the client saw fail. The fault time is drawn within a second so its phase against
the 1 s active checks and gateway probes varies. A run that never reaches steady state within
`--horizon` seconds counts as not reached (null in the JSON, "never" in the table).

Two profiles through the same logic and the same simulated fleet:

- `isthmus`: `ServicePolicy()` defaults (3 consecutive gateway errors eject on the failing
  request, base ejection 5 s, max ejection 100 %, per-try timeout 1 s, active checks and gateway
  probes every 1 s, retries in another locality);
- `envoy`: Envoy's outlier-detection defaults as Istio users set them (interval 10 s,
  5 consecutive 5xx, base ejection 30 s, max ejection 10 %, gateway-error detection not enforced),
  Envoy's timeouts (no per-try timeout, route timeout 15 s), Istio's default retries (2 retries on
  connect-failure and 503, any locality), no active checks and no gateway probes.

Goals (issue 5): zone loss <= 1 s to steady state, cluster loss <= 3 s, zero client-visible
errors for idempotent requests, with the Isthmus defaults. This is the pure-simulation half
(`"mode": "pure-simulation"`); real-process numbers come from the gateway's drills.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from typing import Any

from federation.bench._machine import write_results
from federation.errors import UsageError
from gateway.lb.policy import RetryPolicy, ServicePolicy, TimeoutPolicy
from gateway.lb.testing import (
    BLACKHOLE,
    CALLER_CLUSTER,
    CALLER_LOCALITY,
    REFUSE,
    FakeFleet,
    demo_balancer,
    simulate,
)

HELP = "time to fail over on zone loss, cluster loss and blackhole (real processes, or --pure simulation)"
GOALS_STEADY_S = {"zone-loss": 1.0, "cluster-loss": 3.0}
SCENARIOS = ("zone-loss", "cluster-loss", "blackhole")
WARMUP_S = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pure",
        action="store_true",
        help="simulate through the pure decision logic on a virtual clock instead of faulting real processes",
    )
    parser.add_argument(
        "--reps", "--repetitions", dest="repetitions", type=int, default=20,
        help="runs per fault (and profile, with --pure) (default: %(default)s)",
    )
    parser.add_argument(
        "--attach", metavar="DIR", help="real mode: fault the demo running in DIR (default: bring one up)"
    )
    parser.add_argument(
        "--rate", type=float, default=200.0, help="requests per second (default: %(default)s)"
    )
    parser.add_argument(
        "--horizon",
        type=float,
        default=40.0,
        help="seconds simulated after each fault (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=5, help="random seed (default: %(default)s)")


def profiles() -> dict[str, ServicePolicy]:
    envoy = ServicePolicy.envoy_defaults()
    envoy = ServicePolicy(
        outlier=envoy.outlier,
        health_check=envoy.health_check,
        retry=RetryPolicy(attempts=3, retry_on=("connect-failure", "503"), prefer_other_locality=False),
        timeout=TimeoutPolicy(connect_timeout_s=5.0, per_try_timeout_s=None, request_timeout_s=15.0),
    )
    return {"isthmus": ServicePolicy(), "envoy": envoy}


def run_once(
    scenario: str, profile: str, policy: ServicePolicy, rng: random.Random, rate: float, horizon: float
) -> dict[str, Any]:
    """One simulated fault; times in seconds from the fault."""
    service = "hello.demo" if scenario == "cluster-loss" else "echo.demo"
    balancer = demo_balancer(service, policy)
    fleet = FakeFleet()
    fault_at = WARMUP_S + rng.random()
    if scenario == "cluster-loss":
        faulted = ["gateway:east-2"]
        fleet.set(faulted + [e.id for e in balancer._endpoints if e.cluster == "east-2"], fault_at, BLACKHOLE)
    else:
        faulted = [
            e.id for e in balancer._endpoints if e.cluster == CALLER_CLUSTER and e.locality == CALLER_LOCALITY
        ]
        fleet.set(faulted, fault_at, REFUSE if scenario == "zone-loss" else BLACKHOLE)
    until = fault_at + horizon
    probes = profile == "isthmus"
    result = simulate(balancer, fleet, until=until, rate_per_s=rate, rng=rng, peer_probes=probes)
    first = result.first_success_elsewhere(faulted, fault_at)
    last = result.last_try_to(faulted, fault_at)
    # Steady state: no try to a faulted host after it. Tries still going there in the last
    # quarter of the horizon mean it was never reached.
    if last is None:
        steady = 0.0
    elif last.started >= fault_at + 0.75 * horizon:
        steady = None
    else:
        steady = last.started - fault_at
    after = [r for r in result.requests if r.arrived >= fault_at]
    return {
        "first_success_elsewhere_s": None if first is None else first.ended - fault_at,
        "steady_state_s": steady,
        "client_errors": sum(1 for r in after if not r.ok),
        "requests": len(after),
    }


def percentile(values: list[float | None], p: float) -> float | None:
    """Nearest-rank percentile; a run that never got there (None) ranks above every number."""
    if not values:
        return None
    ranked = sorted(values, key=lambda v: math.inf if v is None else v)
    return ranked[max(0, math.ceil(p / 100 * len(ranked)) - 1)]


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    first = [r["first_success_elsewhere_s"] for r in runs]
    steady = [r["steady_state_s"] for r in runs]
    return {
        "first_success_elsewhere_s": {"p50": percentile(first, 50), "p99": percentile(first, 99)},
        "steady_state_s": {"p50": percentile(steady, 50), "p99": percentile(steady, 99)},
        "steady_state_not_reached": sum(1 for s in steady if s is None),
        "client_errors": sum(r["client_errors"] for r in runs),
        "requests": sum(r["requests"] for r in runs),
    }


def _ms(value: float | None) -> str:
    return "never" if value is None else f"{value * 1000:.0f}"


def _write(path: Any, key: str, payload: dict[str, Any]) -> Any:
    """Write `payload` under `key` of the results file, keeping the other mode's results."""
    import json
    from pathlib import Path

    existing: dict[str, Any] = {}
    try:
        existing = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        existing = {}
    if existing.get("mode") == "pure-simulation":  # the layout before both modes existed
        existing = {"pure": {k: v for k, v in existing.items() if k not in ("machine", "date")}}
    body = {"benchmark": "failover", "pure": existing.get("pure"), "real": existing.get("real")}
    body[key] = payload
    return write_results(path, body)


def run_real(args: argparse.Namespace) -> int:
    import trio

    from federation.bench._failover_real import SLOW_S, WINDOWS_S
    from federation.bench._failover_real import run_real as measure_real
    from federation.commands._common import print_table

    if args.repetitions < 1 or args.rate <= 0:
        raise UsageError("bench failover: --reps must be >= 1 and --rate > 0")
    rate = min(args.rate, 100.0)  # the demo's Python gateways share 2 cores with the client

    def progress(scenario: str, rep: int, result: dict[str, Any]) -> None:
        print(f"{scenario} {rep + 1}/{args.repetitions}: first success elsewhere "
              f"{_ms(result['first_success_elsewhere_s'])} ms, steady {_ms(result['steady_state_s'])} ms, "
              f"errors {result['client_errors']}", flush=True)

    started = time.perf_counter()
    from federation.errors import FederationError

    try:
        raw = trio.run(measure_real, args.attach, args.repetitions, rate, progress)
    except BaseExceptionGroup as group:  # a nursery wraps the one-line errors of a scenario
        ours = group.subgroup(FederationError)
        while isinstance(ours, BaseExceptionGroup):
            ours = ours.exceptions[0]
        if ours is None:
            raise
        raise ours from None
    results: dict[str, Any] = {}
    rows = []
    for scenario, runs in raw.items():
        summary = summarise(runs)
        goal = GOALS_STEADY_S.get(scenario)
        p99 = summary["steady_state_s"]["p99"]
        summary["goal_steady_state_s"] = goal
        summary["goal_met"] = (goal is None or (p99 is not None and p99 <= goal)) and summary["client_errors"] == 0
        summary["runs"] = runs
        results[scenario] = summary
        first = summary["first_success_elsewhere_s"]
        rows.append((scenario, f"{_ms(first['p50'])} / {_ms(first['p99'])}",
                     f"{_ms(summary['steady_state_s']['p50'])} / {_ms(p99)}",
                     f"{summary['client_errors']} of {summary['requests']}", "met" if summary["goal_met"] else "MISSED"))
    payload = {
        "mode": "real-processes",
        "repetitions": args.repetitions,
        "rate_per_s": rate,
        "topology": "the demo: east-1 (us-east-1a, us-east-1b), east-2 (us-east-1c), west-1 (eu-west-1a)",
        "faults": {
            "zone-loss": "SIGKILL of east-1's echo.demo endpoints in us-east-1a; GETs from east-1",
            "cluster-loss": "SIGKILL of east-1's gateway; GETs from east-2 with its own echo.demo stopped",
            "blackhole": "SIGSTOP of east-1's echo.demo endpoints in us-east-1a; GETs from east-1",
        },
        "windows_s": WINDOWS_S,
        "slow_s": SLOW_S,
        "goals": {"zone-loss steady_state_s": 1.0, "cluster-loss steady_state_s": 3.0, "client_errors": 0},
        "results": results,
        "wall_s": round(time.perf_counter() - started, 2),
    }
    path = _write(args.out, "real", payload)
    print_table(
        f"failover, real processes: {args.repetitions} runs each at {rate:g} GET/s; ms from the fault",
        ("fault", "1st success elsewhere p50 / p99", "steady state p50 / p99", "client errors", "goal"),
        rows,
    )
    print(f"wrote {path}")
    return 0


def run(args: argparse.Namespace) -> int:
    if not args.pure:
        return run_real(args)
    if args.repetitions < 1 or args.rate <= 0 or args.horizon < 5:
        raise UsageError("bench failover: --repetitions must be >= 1, --rate > 0 and --horizon >= 5")
    from federation.commands._common import print_table

    started = time.perf_counter()
    rng = random.Random(args.seed)
    results: dict[str, dict[str, Any]] = {}
    rows = []
    for scenario in SCENARIOS:
        results[scenario] = {}
        for profile, policy in profiles().items():
            runs = [
                run_once(scenario, profile, policy, rng, args.rate, args.horizon)
                for _ in range(args.repetitions)
            ]
            summary = summarise(runs)
            goal = GOALS_STEADY_S.get(scenario)
            p99 = summary["steady_state_s"]["p99"]
            summary["goal_steady_state_s"] = goal
            summary["goal_met"] = (
                None
                if profile != "isthmus"
                else (goal is None or (p99 is not None and p99 <= goal)) and summary["client_errors"] == 0
            )
            summary["runs"] = runs
            results[scenario][profile] = summary
            rows.append(
                (
                    scenario,
                    profile,
                    f"{_ms(summary['first_success_elsewhere_s']['p50'])} / {_ms(summary['first_success_elsewhere_s']['p99'])}",
                    f"{_ms(summary['steady_state_s']['p50'])} / {_ms(p99)}",
                    f"{summary['client_errors']}",
                    "" if summary["goal_met"] is None else ("met" if summary["goal_met"] else "MISSED"),
                )
            )
    payload = {
        "mode": "pure-simulation",
        "repetitions": args.repetitions,
        "rate_per_s": args.rate,
        "horizon_s": args.horizon,
        "seed": args.seed,
        "topology": "caller east-1/us-east-1a; echo.demo: 3 endpoints in each of us-east-1a, us-east-1b (east-1), "
        "us-east-1c (east-2), eu-west-1a (west-1); hello.demo: east-2 and west-1 only",
        "profiles": {
            "isthmus": "ServicePolicy() defaults",
            "envoy": "outlier interval 10 s, 5 consecutive 5xx, base ejection 30 s, max ejection 10 %; "
            "no per-try timeout, route timeout 15 s; 2 retries on connect-failure,503; "
            "no active checks, no gateway probes",
        },
        "goals": {"zone-loss steady_state_s": 1.0, "cluster-loss steady_state_s": 3.0, "client_errors": 0},
        "results": results,
        "wall_s": round(time.perf_counter() - started, 2),
    }
    path = _write(args.out, "pure", payload)
    print_table(
        f"failover, pure simulation: {args.repetitions} runs each at {args.rate:g} req/s; ms from the fault",
        (
            "fault",
            "profile",
            "1st success elsewhere p50 / p99",
            "steady state p50 / p99",
            "client errors",
            "goal",
        ),
        rows,
    )
    print(f"wrote {path}")
    return 0
