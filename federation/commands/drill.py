"""`isthmus drill run|list`: scripted failover drills against the demo topology, with SLOs and reports.

`drill run` refuses bad input before anything starts (one line, exit 2): every scenario file is
validated, every fault is checked against this machine (iptables for link faults) and, with `--attach`,
against the running demo. Ctrl-C restores every fault and stops a demo the drill started (exit 130).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from federation.commands._common import (
    add_json_option,
    add_noun,
    add_verb,
    print_json,
    print_table,
    run_async,
)


def add_parser(subparsers, noun: str, help_text: str) -> None:
    verbs = add_noun(subparsers, noun, help_text)
    run = add_verb(verbs, "run", "run drills; exit 0 only when every SLO held", _run)
    run.add_argument("scenarios", nargs="+", metavar="SCENARIO", help="a scenario file, or a shipped drill's name (see `drill list`)")
    run.add_argument("--attach", metavar="DEMO_DIR", help="use the demo running in DEMO_DIR instead of starting one")
    run.add_argument("--report", metavar="DIR", default="drill-reports", help="where JSON and HTML reports go (default: %(default)s)")
    run.add_argument("--backend", choices=("sqlite", "etcd"), default="sqlite", help="registry of a demo the drill starts (a drill with registry-down always gets etcd)")
    run.add_argument("--duration", type=float, metavar="S", help="shorten every drill to S seconds (faults scaled to fit)")
    listing = add_verb(verbs, "list", "the shipped drills, one line each", _list)
    add_json_option(listing)


def _list(args: argparse.Namespace) -> int:
    from scenarios.model import Scenario
    from scenarios.runner import shipped_scenarios

    rows = [Scenario.from_toml(p) for p in shipped_scenarios()]
    if args.json:
        print_json([{"name": s.name, "description": s.description, "duration_s": s.duration_s, "path": str(s.path)} for s in rows])
        return 0
    print_table("shipped drills (isthmus drill run NAME)", ["drill", "seconds", "what it checks"],
                [(s.name, f"{s.duration_s:g}", s.description) for s in rows])
    return 0


def _run(args: argparse.Namespace) -> int:
    from federation.bench._machine import describe_machine
    from scenarios.errors import DrillError
    from scenarios.faults import preflight
    from scenarios.model import Scenario
    from scenarios.report import print_summary, write_report
    from scenarios.runner import check_attached, find_scenario, run_drill, shorten

    # Every scenario is validated, and checked against this machine and the attached demo, before anything starts.
    scenarios = [Scenario.from_toml(find_scenario(name)) for name in args.scenarios]
    if args.duration is not None:
        if not 1 <= args.duration <= 3600:
            raise DrillError(f"--duration: {args.duration:g} is not a number of seconds in [1, 3600]")
        scenarios = [shorten(s, args.duration) for s in scenarios]
    attach = Path(args.attach) if args.attach else None
    for scenario in scenarios:
        preflight(scenario)
        if attach is not None:
            check_attached(scenario, attach)
    results = []
    for scenario in scenarios:
        result = run_async(lambda s=scenario: run_drill(s, attach=attach, backend=args.backend))
        json_path, html_path = write_report(result, Path(args.report), machine=describe_machine())
        print(f"{scenario.name}: {'passed' if result.passed else 'FAILED'} — report {html_path}")
        results.append(result)
    print_summary(results)
    return 0 if all(r.passed for r in results) else 1
