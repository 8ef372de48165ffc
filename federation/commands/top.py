"""`isthmus top`: a live terminal table of services and cluster pairs (rps, success, p99, active
locality) and of the linked peers' own summaries (health, last answer, gateways up, their exported
services' traffic), fed by the control plane's `/api/v1/overview`, the data the dashboard draws.

`--once --json` prints one overview for scripts. Imports httpx and rich; the view model's shape is
`federation.dashboard.model.MeshModel.overview`.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import httpx
import trio

from federation.commands._common import add_config_option, add_json_option, print_json, run_async
from federation.errors import FederationError, UsageError
from registry.errors import ValidationError
from registry.model import parse_host_port


class OverviewUnavailable(FederationError):
    """The control plane does not answer `/api/v1/overview` (down, or the dashboard not mounted)."""


def add_parser(subparsers: Any, noun: str, help_text: str) -> None:
    parser = subparsers.add_parser(noun, help=help_text, description=help_text + " (request rate, success rate, "
                                   "p99 latency, active locality), from the control plane's /api/v1/overview")  # fmt: skip
    add_config_option(parser)
    parser.add_argument("--control", metavar="HOST:PORT", help="the control plane's API address (instead of --config)")
    parser.add_argument("--once", action="store_true", help="print one view and exit")
    parser.add_argument("--interval", type=float, default=1.0, metavar="S", help="refresh period (default: %(default)s s)")
    add_json_option(parser)
    parser.set_defaults(run=run)


def control_address(args: argparse.Namespace) -> str:
    if args.control and args.config:
        raise UsageError("give either --config or --control, not both")
    if args.control:
        try:
            parse_host_port("--control", args.control)
        except ValidationError as exc:
            raise UsageError(str(exc)) from None
        return args.control
    if args.config:
        from federation.config import ClusterConfig

        return ClusterConfig.from_toml(args.config).control_api
    raise UsageError("top needs --config CLUSTER.TOML or --control HOST:PORT")


def fetch_overview(address: str, *, timeout_s: float = 5.0) -> dict[str, Any]:
    url = f"http://{address}/api/v1/overview"
    try:
        response = httpx.get(url, timeout=timeout_s, trust_env=False)
    except httpx.TransportError as exc:
        raise OverviewUnavailable(f"control plane at {address} is not reachable ({exc or type(exc).__name__})") from None
    if response.status_code != 200:
        raise OverviewUnavailable(f"{url} answered HTTP {response.status_code}; is the dashboard mounted on this control plane?")
    try:
        body = response.json()
    except ValueError:
        raise OverviewUnavailable(f"{url} did not answer JSON") from None
    if not isinstance(body, dict) or "services" not in body:
        raise OverviewUnavailable(f"{url} did not answer an overview")
    return body


def _num(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pct(value: Any) -> str:
    return "–" if value is None else f"{value * 100:.2f}%"


def render(overview: dict[str, Any], address: str) -> Any:
    """The rich renderable for one overview: services, cluster pairs, then warnings."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    services = Table(title=f"services (rates over {_num(overview.get('rate_window_s'), 0)} s)", expand=True)
    for column, justify in (("service", "left"), ("req/s", "right"), ("success", "right"), ("p50 ms", "right"),
                            ("p99 ms", "right"), ("active locality", "left")):  # fmt: skip
        services.add_column(column, justify=justify)  # type: ignore[arg-type]
    for s in overview["services"]:
        style = "red" if s["success_rate"] is not None and s["success_rate"] < 0.99 else None
        services.add_row(Text(s["name"]), _num(s["rps"]), Text(_pct(s["success_rate"]), style=style or ""),
                         _num(s["p50_ms"]), _num(s["p99_ms"]), Text(s["active_locality"] or "–"))  # fmt: skip
    pairs = Table(title="cluster pairs", expand=True)
    for column, justify in (("source", "left"), ("destination", "left"), ("req/s", "right"), ("success", "right"),
                            ("p99 ms", "right"), ("link", "left")):  # fmt: skip
        pairs.add_column(column, justify=justify)  # type: ignore[arg-type]
    links = {(link["source"], link["destination"]): link for link in overview.get("links", [])}
    for p in overview["pairs"]:
        link = links.get((p["source"], p["destination"]))
        state = "local" if p["source"] == p["destination"] else (link["state"] if link else "unknown")
        if link and link.get("rtt_ms") is not None:
            state += f" {link['rtt_ms']:.1f} ms"
        pairs.add_row(Text(p["source"]), Text(p["destination"]), _num(p["rps"]), _pct(p["success_rate"]),
                      _num(p["p99_ms"]), Text(state))  # fmt: skip
    parts: list[Any] = [Text(f"isthmus top · {address} · updated {time.strftime('%H:%M:%S')}", style="bold"),
                        services, pairs]  # fmt: skip
    if overview.get("peers"):
        parts.append(_peers_table(overview["peers"]))
    for warning in overview.get("warnings", []):
        parts.append(Text(f"! {warning['message']}", style="red" if warning["severity"] == "critical" else "yellow"))
    return Group(*parts)


PEER_STYLES = {"ok": "", "degraded": "yellow", "silent": "red", "unknown": "dim"}


def _peers_table(peers: list[dict[str, Any]]) -> Any:
    """Each linked peer's own summary as this control plane last received it; a silent peer's
    figures are its last good ones, dimmed, with how old they are."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="peers (their own summaries: the services they export to this cluster)", expand=True)
    for column, justify in (("peer", "left"), ("health", "left"), ("last summary", "right"), ("gateways up", "right"),
                            ("services", "right"), ("req/s", "right"), ("worst success", "right")):  # fmt: skip
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for peer in peers:
        summary = peer.get("summary") or {}
        gateways = summary.get("gateways", [])
        exported = summary.get("services", [])
        rates = [s["success_rate"] for s in exported if s.get("success_rate") is not None]
        health = peer["health"] if peer["state"] != "refused" else "refused"
        age = "never" if peer.get("age_s") is None else f"{peer['age_s']:.0f} s ago"
        dim = "dim" if not peer.get("current") else ""
        table.add_row(
            Text(peer["name"]), Text(health, style=PEER_STYLES.get(peer["health"], "")), Text(age),
            Text(f"{sum(g['state'] == 'up' for g in gateways)}/{len(gateways)}" if summary else "–", style=dim),
            Text(str(len(exported)) if summary else "–", style=dim),
            Text(_num(sum(s["rps"] for s in exported)) if summary else "–", style=dim),
            Text(_pct(min(rates)) if rates else "–", style=dim),
        )  # fmt: skip
    return table


def run(args: argparse.Namespace) -> int:
    address = control_address(args)
    if args.interval <= 0:
        raise UsageError(f"--interval: {args.interval} must be positive")
    if args.once:
        overview = fetch_overview(address)
        if args.json:
            print_json(overview)
        else:
            from rich.console import Console

            Console().print(render(overview, address))
        return 0
    if args.json:
        raise UsageError("--json needs --once (a live view is for terminals)")
    run_async(_live, address, args.interval)
    return 0


async def _live(address: str, interval_s: float) -> None:
    """Refresh the table every `interval_s` until interrupted; a control plane that stops answering
    is shown as such and retried."""
    from rich.live import Live
    from rich.text import Text

    overview = await trio.to_thread.run_sync(fetch_overview, address)
    with Live(render(overview, address), refresh_per_second=4, screen=False) as live:
        while True:
            await trio.sleep(interval_s)
            try:
                live.update(render(await trio.to_thread.run_sync(fetch_overview, address), address))
            except OverviewUnavailable as exc:
                live.update(Text(f"isthmus top: {exc}; retrying", style="red"))
