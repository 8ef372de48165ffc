"""`isthmus gateway --config CLUSTER.TOML [--catalog FILE] [--workers N]`: run one cluster's gateway.

Builds a `gateway.config.GatewayConfig` from the cluster config (`[gateway]` table: listener
addresses, `catalog_file`, `tcp_ports`, `alias_suffixes`, timeouts; `[policies]` for the
balancers) and the cluster's `gateway` identity under the PKI dir, then serves until
SIGTERM/SIGINT, which drain. The catalog comes from `--catalog`, else `[gateway] catalog_file`,
else the cluster's control plane (`[control] api`). With `--workers N`, N processes share the
ports (SO_REUSEPORT).

Federation calls from peers (authority `federation.isthmus` on the east-west listener) are
forwarded to `[control] api` (or `[gateway] control_api`) with the verified peer identity and the
secret in `<data_dir>/control/forward.secret` (or `[gateway] forward_secret_file`); see
`gateway.federation_route`. The listeners trust the local bundle plus every linked peer's bundle.
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


def forward_secret_path(cluster_config: ClusterConfig) -> Path:
    """Where the control plane keeps the secret its gateway sends with forwarded federation calls."""
    return cluster_config.data_dir / "control" / "forward.secret"


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


def config_for(cluster_config: ClusterConfig, *, source: str | Path | None = None, **overrides):
    """The gateway config of `cluster_config` (its `[gateway]` table, its `gateway` identity, the
    control plane federation calls are forwarded to); `overrides` win. Errors name `source`."""
    from certs.store import load_bundle, load_identity
    from gateway.config import GatewayConfig
    from gateway.errors import ConfigInvalid
    from gateway.federation_route import PeerTrustContexts
    from registry.model import Locality

    section = cluster_config.raw.get("gateway", {})
    section = {k: v for k, v in section.items() if k not in ADDRESS_KEYS}
    cluster = cluster_config.cluster
    base_dir = cluster_config.path.parent.resolve() if cluster_config.path is not None else None
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
            contexts=PeerTrustContexts(load_identity(cluster_config.pki_dir, cluster.name, "gateway"),
                                       load_bundle(cluster_config.pki_dir)),
            control_api=section.get("control_api", cluster_config.control_api),
            forward_secret_file=None if "forward_secret_file" in section else forward_secret_path(cluster_config),
            **overrides,
        )
    except ConfigInvalid as exc:
        raise ConfigInvalid(f"{source or cluster_config.path or 'gateway'}: {exc}") from None


def build_config(args: argparse.Namespace):
    """The gateway config for `args` (errors are one line naming the file and field)."""
    cluster_config = ClusterConfig.from_toml(args.config)
    return config_for(
        cluster_config,
        source=args.config,
        catalog_file=Path(args.catalog).resolve() if args.catalog else None,
        reuse_port=True if (args.reuse_port or args.workers > 1) else None,
    )


def catalog_source(cluster_config: ClusterConfig, config, *, cache_name: str = "catalog.json"):
    """Where the gateway's catalogs come from: the catalog file when the config names one, else the
    cluster's control plane (cached on disk as `<data_dir>/gateway/<cache_name>` for restarts). Either
    way the listeners trust the bundle of every peer in the catalog (peers may have their own roots)."""
    from gateway.catalog_source import FileCatalogSource
    from gateway.control_source import ControlPlaneCatalogSource
    from gateway.federation_route import trusting_peers

    if config.catalog_file is not None:
        source = FileCatalogSource(config.catalog_file, poll_interval_s=config.catalog_poll_interval_s)
    else:
        cache = cluster_config.data_dir / "gateway" / cache_name
        cache.parent.mkdir(parents=True, exist_ok=True)
        source = ControlPlaneCatalogSource(cluster_config.control_api, cache_file=cache)
    return trusting_peers(source, config.contexts)


async def serve_cluster_gateway(
    cluster_config: ClusterConfig,
    *,
    config=None,
    cache_name: str = "catalog.json",
    handle_signals: bool = False,
    task_status=trio.TASK_STATUS_IGNORED,
    **overrides,
) -> None:
    """Run `cluster_config`'s gateway in this trio run, with its `[policies]`, `[authz]`,
    `[access_log]` and `[tracing]`; `task_status.started(gateway)` once it serves."""
    from gateway.config import tracing_options
    from gateway.lb.balancer import BalancerSet
    from gateway.lb.policy import ServicePolicy
    from gateway.request_policy import traffic_options
    from gateway.server import serve_gateway

    config = config or config_for(cluster_config, **overrides)
    source = catalog_source(cluster_config, config, cache_name=cache_name)
    balancers = BalancerSet(ServicePolicy.from_policies(cluster_config.raw.get("policies")))
    authz, access_log = traffic_options(cluster_config.raw, cluster_config.data_dir)
    tracing = tracing_options(cluster_config.raw)
    async with trio.open_nursery() as nursery:
        if handle_signals:
            nursery.start_soon(reload_identity_on_sighup, config.contexts, cluster_config)
        await serve_gateway(config, source, handle_signals=handle_signals, picker_factory=balancers, authz=authz,
                            access_log=access_log, tracing=tracing, task_status=task_status)
        nursery.cancel_scope.cancel()


async def reload_identity_on_sighup(contexts, cluster_config: ClusterConfig) -> None:
    """SIGHUP: load the gateway identity and trust bundle from the PKI dir again (after a rotation or a
    reissue); new connections use them, open ones keep theirs. A bad identity keeps the current one."""
    import signal
    import ssl

    from certs.errors import CertsError
    from certs.store import load_bundle, load_identity

    log = logging.getLogger("isthmus.gateway")
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            try:
                identity = load_identity(cluster_config.pki_dir, cluster_config.cluster.name, "gateway")
                contexts.reload_identity(identity, load_bundle(cluster_config.pki_dir))
            except (CertsError, OSError, ssl.SSLError) as exc:
                log.warning("SIGHUP: keeping the current identity: %s", exc)
                continue
            log.warning("SIGHUP: now presenting %s (valid until %s)", identity.spiffe_id, identity.not_after)


def run(args: argparse.Namespace) -> int:
    from gateway.catalog_source import read_catalog
    from gateway.lb.policy import ServicePolicy
    from gateway.request_policy import traffic_options
    from gateway.runtime import tune_garbage_collector
    from gateway.workers import supervise

    if args.workers < 1:
        raise UsageError(f"--workers: {args.workers} is not a positive number of processes")
    config = build_config(args)
    cluster_config = ClusterConfig.from_toml(args.config)
    # Bad policies, authz rules or a bad first catalog are one-line errors here, before any worker starts.
    ServicePolicy.from_policies(cluster_config.raw.get("policies"))
    traffic_options(cluster_config.raw, cluster_config.data_dir)
    if config.catalog_file is not None:
        read_catalog(config.catalog_file)
    if args.workers > 1:
        base = [sys.executable, "-m", "federation.cli"] + (["--debug"] if args.debug else [])
        command = base + ["gateway", "--config", str(args.config), "--workers", "1", "--reuse-port"]
        if config.catalog_file is not None:
            command += ["--catalog", str(config.catalog_file)]
        print(f"isthmus gateway {config.cluster}: starting {args.workers} workers", file=sys.stderr, flush=True)
        return supervise([command] * args.workers)
    logging.basicConfig(level=logging.INFO, format=f"isthmus gateway {config.cluster}: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per catalog watch reconnect
    if config.catalog_file is None:
        print(f"isthmus gateway {config.cluster}: waiting for the catalog from the control plane at "
              f"{cluster_config.control_api}", file=sys.stderr, flush=True)

    class Announce:
        """Told by `serve_gateway` once every listener is bound and the first catalog is in force."""

        def started(self, gateway) -> None:
            listeners = ", ".join(f"{name} {host}:{port}" for name, (host, port) in gateway.addresses.items())
            print(f"isthmus gateway {config.cluster}: serving ({listeners}; catalog revision "
                  f"{gateway.catalog.revision})", file=sys.stderr, flush=True)

    tune_garbage_collector()
    # One cache file per process: workers (started with --reuse-port) each keep their own.
    cache_name = f"catalog-{os.getpid()}.json" if args.reuse_port else "catalog.json"
    trio.run(lambda: serve_cluster_gateway(cluster_config, config=config, cache_name=cache_name,
                                           handle_signals=True, task_status=Announce()))
    return 0
