"""`isthmus cluster`: peer this cluster with others.

    isthmus cluster token --for west-1 [--ttl 15m] --config east-1.toml   # prints a single-use token
    isthmus cluster register --token TOKEN --config west-1.toml          # links both clusters
    isthmus cluster list [--json] --config F                             # state, sync, staleness, probe RTT
    isthmus cluster check [NAME] [--json] --config F                     # a verdict per check
    isthmus cluster remove NAME --config F

`token` works offline (it needs the cluster CA key and the data dir); the others talk to the
running control plane (`isthmus control --config F`). `check` exits 1 when any check fails.
`list` reads `GET /v1/peers`, whose probe state, round trip and staleness are the readings the
control plane's `/metrics` (and so the dashboard) report (`federation.metrics.peer_readings`).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from federation.commands._client import call
from federation.commands._common import (
    add_config_option,
    add_json_option,
    add_noun,
    add_verb,
    print_json,
    print_table,
)
from federation.config import ClusterConfig

VERDICT_MARKS = {"ok": "✓ ok", "warn": "! warn", "fail": "✗ fail"}


def add_parser(subparsers, noun: str, help_text: str) -> None:
    verbs = add_noun(subparsers, noun, help_text)

    p = add_verb(verbs, "token", "print a single-use peering token for another cluster", run_token)
    p.add_argument("--for", dest="peer", required=True, metavar="NAME", help="the cluster that will redeem it")
    p.add_argument("--ttl", default="15m", help="how long the token stays valid (90s, 15m, 2h, 1d; default %(default)s)")
    add_config_option(p, required=True)
    add_json_option(p)

    p = add_verb(verbs, "register", "link with the cluster that issued a peering token", run_register)
    p.add_argument("--token", required=True, help="the token printed by `isthmus cluster token` on the other cluster")
    add_config_option(p, required=True)
    add_json_option(p)

    p = add_verb(verbs, "list", "peers: locality, state, last sync, revision, staleness, probe RTT", run_list)
    add_config_option(p, required=True)
    add_json_option(p)

    p = add_verb(verbs, "check", "check the links: reachability, certificates, clock skew, trust, exports, probe", run_check)
    p.add_argument("name", nargs="?", metavar="NAME", help="one peer (default: every peer)")
    add_config_option(p, required=True)
    add_json_option(p)

    p = add_verb(verbs, "remove", "unlink a peer (its imports are dropped)", run_remove)
    p.add_argument("name", metavar="NAME", help="the peer to remove")
    add_config_option(p, required=True)


def run_token(args: argparse.Namespace) -> int:
    from federation.control import issue_peering_token
    from federation.peering import parse_ttl
    from registry.model import check_label

    config = ClusterConfig.from_toml(args.config)
    check_label("--for", args.peer)
    text, token = issue_peering_token(config, args.peer, parse_ttl(args.ttl))
    if args.json:
        print_json({"token": text, "cluster": token.cluster, "for": token.peer, "expires_at": token.expires_at})
        return 0
    print(text)
    expires = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(token.expires_at))
    print(f"token for {token.peer} from {token.cluster}: single use, expires {expires}; on {token.peer} run:\n"
          f"  isthmus cluster register --token <token> --config <{token.peer}.toml>", file=sys.stderr)  # fmt: skip
    return 0


def run_register(args: argparse.Namespace) -> int:
    from federation.peering import verify_token

    config = ClusterConfig.from_toml(args.config)
    # Checked here first, so a bad token is named even when the control plane is down.
    verify_token(args.token, expect_peer=config.cluster.name, now=time.time())
    result = call(config, "POST", "/v1/peering/register", json={"token": args.token.strip()})
    if args.json:
        print_json(result)
        return 0
    print(f"{config.cluster.name} is now linked with {result['peer']} ({result['locality']}), "
          f"gateway {result['gateway']}, control {result['control']}")  # fmt: skip
    for fp in result.get("root_fingerprints", []):
        print(f"  trusted root (SHA-256): {fp}")
    return 0


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def run_list(args: argparse.Namespace) -> int:
    config = ClusterConfig.from_toml(args.config)
    peers: list[dict[str, Any]] = call(config, "GET", "/v1/peers")["peers"]
    if args.json:
        print_json(peers)
        return 0
    rows = []
    for p in peers:
        stale = "-" if p["stale_s"] is None else f"stale {p['stale_s']:.0f}s"
        rtt = "-" if p["rtt_ms"] is None else f"{p['rtt_ms']:.1f} ms"
        probe = p.get("probe", "unknown")
        rows.append([p["name"], p["locality"], p["state"], _age(p["last_sync_age_s"]),
                     "-" if p["revision"] is None else p["revision"], stale,
                     rtt if probe == "up" else probe, f"{p['imported_services']}/{p['imported_endpoints']}"])  # fmt: skip
    print_table(f"peers of {config.cluster.name}", ["name", "locality", "state", "last sync", "rev", "staleness",
                                                    "probe rtt", "svc/ep"], rows)  # fmt: skip
    return 0


def run_check(args: argparse.Namespace) -> int:
    config = ClusterConfig.from_toml(args.config)
    names = [args.name] if args.name else [p["name"] for p in call(config, "GET", "/v1/peers")["peers"]]
    checks: list[dict[str, str]] = []
    for name in names:
        checks += call(config, "GET", f"/v1/peers/{name}/check")["checks"]
    failed = any(c["verdict"] == "fail" for c in checks)
    if args.json:
        print_json({"ok": not failed, "checks": checks})
    elif not checks:
        print(f"{config.cluster.name} has no peers (link one with `isthmus cluster register`)")
    else:
        print_table(f"checks of {config.cluster.name}", ["peer", "check", "verdict", "detail"],
                    [[c["peer"], c["check"], VERDICT_MARKS.get(c["verdict"], c["verdict"]), c["detail"]] for c in checks])  # fmt: skip
        print("verdict: " + ("some checks failed" if failed else "all links healthy"))
    return 1 if failed else 0


def run_remove(args: argparse.Namespace) -> int:
    config = ClusterConfig.from_toml(args.config)
    call(config, "DELETE", f"/v1/peers/{args.name}")
    print(f"{config.cluster.name}: peer {args.name} removed; its imports are dropped")
    return 0
