"""`isthmus gateway --config CLUSTER.TOML [--catalog FILE] [--workers N]`: run one cluster's gateway.

Builds a `gateway.config.GatewayConfig` from the cluster config (`[gateway]` table: listener
addresses, `catalog_file`, `tcp_ports`, `alias_suffixes`, timeouts; `[policies]` for the
balancers) and the cluster's `gateway` identity under the PKI dir, then serves until
SIGTERM/SIGINT, which drain. The catalog comes from `--catalog`, else `[gateway] catalog_file`,
else the cluster's control plane (`[control] api`). With `--workers N`, N processes share the
ports (SO_REUSEPORT).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import trio

from federation.commands._common import add_config_option
from federation.config import ClusterConfig
from federation.errors import UsageError

# Set by `ClusterConfig` from `[gateway]` already; the rest of the table goes to `GatewayConfig`.
ADDRESS_KEYS = ("eastwest", "outbound", "admin")


def add_parser(subparsers, noun: str, help_text: str) -> None:
    parser = subparsers.add_parser(
        noun,
        help=help_text,
        description=help_text + ". Serves until SIGTERM or Ctrl-C, which drain in-flight requests first.",
    )
    add_config_option(parser, required=True)
    parser.add_argument("--catalog", metavar="FILE",
                        help="catalog file (JSON or TOML, reloaded on change); default: [gateway] catalog_file, "
                             "else the cluster's control plane ([control] api)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="worker processes sharing the ports with SO_REUSEPORT (default: 1)")
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(run=run)


def build_config(args: argparse.Namespace):
    """The gateway config for `args` (errors are one line naming the file and field)."""
    from certs.store import load_bundle, load_identity
    from gateway.config import GatewayConfig
    from gateway.errors import ConfigInvalid
    from registry.model import Locality

    cluster_config = ClusterConfig.from_toml(args.config)
    section = cluster_config.raw.get("gateway", {})
    section = {k: v for k, v in section.items() if k not in ADDRESS_KEYS}
    cluster = cluster_config.cluster
    base_dir = Path(args.config).parent.resolve()
    catalog = Path(args.catalog).resolve() if args.catalog else None
    try:
        return GatewayConfig.from_mapping(
            section,
            cluster=cluster.name,
            locality=Locality(cluster.region, cluster.zones[0]),
            trust_domain=cluster_config.trust_domain,
            base_dir=base_dir,
            eastwest=cluster_config.eastwest,
            outbound=cluster_config.outbound,
            admin=cluster_config.admin,
            identity=load_identity(cluster_config.pki_dir, cluster.name, "gateway"),
            bundle=load_bundle(cluster_config.pki_dir),
            catalog_file=catalog,
            reuse_port=True if (args.reuse_port or args.workers > 1) else None,
        )
    except ConfigInvalid as exc:
        raise ConfigInvalid(f"{args.config}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    from gateway.catalog_source import FileCatalogSource, read_catalog
    from gateway.lb.balancer import BalancerSet
    from gateway.lb.policy import ServicePolicy
    from gateway.server import serve_gateway
    from gateway.workers import supervise

    if args.workers < 1:
        raise UsageError(f"--workers: {args.workers} is not a positive number of processes")
    config = build_config(args)
    cluster_config = ClusterConfig.from_toml(args.config)
    policies = ServicePolicy.from_policies(cluster_config.raw.get("policies"))
    if config.catalog_file is not None:
        read_catalog(config.catalog_file)  # a bad first catalog is a one-line error here, before any worker starts
    if args.workers > 1:
        base = [sys.executable, "-m", "federation.cli"] + (["--debug"] if args.debug else [])
        command = base + ["gateway", "--config", str(args.config), "--workers", "1", "--reuse-port"]
        if config.catalog_file is not None:
            command += ["--catalog", str(config.catalog_file)]
        print(f"isthmus gateway {config.cluster}: starting {args.workers} workers", file=sys.stderr, flush=True)
        return supervise([command] * args.workers)
    logging.basicConfig(level=logging.INFO, format=f"isthmus gateway {config.cluster}: %(message)s")
    if config.catalog_file is not None:
        source = FileCatalogSource(config.catalog_file, poll_interval_s=config.catalog_poll_interval_s)
    else:
        # No catalog file: the cluster's control plane streams it (cached on disk for restarts).
        from gateway.control_source import ControlPlaneCatalogSource

        # One cache file per process: workers (started with --reuse-port) each keep their own.
        name = f"catalog-{os.getpid()}.json" if args.reuse_port else "catalog.json"
        cache = cluster_config.data_dir / "gateway" / name
        cache.parent.mkdir(parents=True, exist_ok=True)
        source = ControlPlaneCatalogSource(cluster_config.control_api, cache_file=cache)
        print(f"isthmus gateway {config.cluster}: waiting for the catalog from the control plane at "
              f"{cluster_config.control_api}", file=sys.stderr, flush=True)
    balancers = BalancerSet(policies)

    class Announce:
        """Told by `serve_gateway` once every listener is bound and the first catalog is in force."""

        def started(self, gateway) -> None:
            listeners = ", ".join(f"{name} {host}:{port}" for name, (host, port) in gateway.addresses.items())
            print(f"isthmus gateway {config.cluster}: serving ({listeners}; catalog revision "
                  f"{gateway.catalog.revision})", file=sys.stderr, flush=True)

    async def main() -> None:
        await serve_gateway(config, source, handle_signals=True, picker_factory=balancers, task_status=Announce())

    trio.run(main)
    return 0
