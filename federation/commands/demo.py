"""`isthmus demo up|status|down|serve`: the local multi-cluster demo on loopback."""

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

DEFAULT_DIR = "demo-data"


def _dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default=DEFAULT_DIR, help="where the demo keeps its PKI, configs, data and logs (default: %(default)s)")


def _clusters_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clusters", metavar="NAME[,NAME]", type=lambda v: [c for c in v.split(",") if c],
                        default=[], help="only these clusters of the demo topology (east-1, east-2, west-1)")


def add_parser(subparsers, noun: str, help_text: str) -> None:
    verbs = add_noun(subparsers, noun, help_text)
    up = add_verb(verbs, "up", "bring the demo up (idempotent): three clusters in two regions on loopback", _up)
    _dir_option(up)
    up.add_argument("--backend", choices=("sqlite", "etcd"), default="sqlite", help="each cluster's registry backend")
    _clusters_option(up)
    up.add_argument("--bare", action="store_true", help="no peering, no exports, no Prometheus (for composing the demo from Terraform resources)")
    status = add_verb(verbs, "status", "what runs where", _status)
    _dir_option(status)
    add_json_option(status)
    down = add_verb(verbs, "down", "stop everything the demo started (or only --clusters)", _down)
    _dir_option(down)
    _clusters_option(down)
    serve = add_verb(verbs, "serve", "run one sample endpoint (used by `demo up`)", _serve)
    serve.add_argument("service", help="name.namespace, e.g. echo.demo")
    serve.add_argument("--cluster", required=True)
    serve.add_argument("--zone", required=True)
    serve.add_argument("--listen", required=True, metavar="HOST:PORT")
    serve.add_argument("--protocol", choices=("http", "grpc"), default="http")


def _up(args: argparse.Namespace) -> int:
    from federation.demo.orchestrator import demo_up

    state = run_async(demo_up, Path(args.dir), args.backend, args.clusters, args.bare)
    _print_state(state)
    east = state.cluster("east-1")
    if east is not None and not args.bare:
        cli = _cli_name()
        print(f"""
Try it:
  curl -s -H 'host: hello.demo' http://{east['outbound']}/     # east-1 -> west-1 (eu-west), through both gateways
  curl -s -H 'host: echo.demo'  http://{east['outbound']}/     # stays in east-1's own zone
Break a zone and watch traffic move:
  {cli} drill run zone-outage --attach {args.dir}
Stop everything:
  {cli} demo down --dir {args.dir}""")
    return 0


def _cli_name() -> str:
    """How the user can call this CLI: `isthmus` when it is on PATH, else its path in the virtualenv."""
    import os
    import shutil
    import sys

    if shutil.which("isthmus"):
        return "isthmus"
    candidate = Path(sys.executable).parent / "isthmus"
    return os.path.relpath(candidate) if candidate.exists() else f"{sys.executable} -m federation.cli"


def _status(args: argparse.Namespace) -> int:
    from federation.demo import processes
    from federation.demo.orchestrator import DemoState

    state = DemoState.load(Path(args.dir).resolve())
    if state is None:
        if args.json:
            print_json(None)
        else:
            print(f"no demo in {args.dir}")
        return 0
    if args.json:
        print_json(state.to_json())
        return 0
    _print_state(state)
    down = [pid for pid in state.all_pids() if not processes.alive(pid)]
    if down:
        print(f"{len(down)} of {len(state.all_pids())} demo processes are not running: {down}")
    return 0


def _down(args: argparse.Namespace) -> int:
    from federation.demo.orchestrator import demo_down

    stopped, killed = run_async(demo_down, Path(args.dir), args.clusters)
    print(f"demo in {args.dir}: stopped {stopped} processes" + (f" ({len(killed)} needed SIGKILL)" if killed else ""))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import trio

    from federation.demo.services import Identity, serve_echo, start_greeter
    from registry.model import parse_host_port

    host, port = parse_host_port("--listen", args.listen)
    identity = Identity(args.service, args.cluster, args.zone)
    if args.protocol == "grpc":
        stop = start_greeter(identity, host, port)
        try:
            trio.run(trio.sleep_forever)
        finally:
            stop()
        return 0
    trio.run(serve_echo, identity, host, port)
    return 0


def _print_state(state) -> None:
    view = state.to_json()
    print_table(
        f"Isthmus demo in {state.dir} (registry: {state.backend})",
        ["cluster", "region", "zones", "outbound", "east-west", "admin", "control"],
        [
            (c["name"], c["region"], ",".join(c["zones"]), c.get("outbound"), c.get("eastwest"), c.get("admin"), c.get("control"))
            for c in view["clusters"]
        ],
    )
    print_table(
        None,
        ["service", "cluster", "zone", "address", "pid"],
        [(e["service"], e["cluster"], e["zone"], e["address"], e["pid"]) for e in view["endpoints"]],
    )
    if state.dashboard:
        print(f"dashboard:  {state.dashboard}")
    if state.prometheus:
        print(f"prometheus: {state.prometheus}")
