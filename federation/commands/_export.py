"""`isthmus service export NAME.NS --to west-1,east-2` (or `'*'`): let peers import a service.

The `service` noun calls `add_export_verb(verbs)`. The export is written to the registry of the
cluster named by `--cluster` (default: the config's cluster); the control plane streams it to
the named peers. `--to ''` is refused; `isthmus service export NAME.NS --remove` withdraws it.
"""

from __future__ import annotations

import argparse

from federation.commands._common import add_config_option, add_registry_option, add_verb, run_async
from federation.config import ClusterConfig
from federation.errors import UsageError
from registry.model import Export, parse_service_key


def add_export_verb(verbs) -> argparse.ArgumentParser:
    parser = add_verb(verbs, "export", "let peer clusters import a service (an export)", run)
    parser.add_argument("service", metavar="NAME.NS", help="the service, e.g. checkout.shop")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--to", metavar="PEERS", help="comma-separated peer clusters, or '*' for every peer")
    group.add_argument("--remove", action="store_true", help="withdraw the export")
    parser.add_argument("--cluster", metavar="NAME", help="the exporting cluster (default: the config's)")
    add_config_option(parser)
    add_registry_option(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from registry.store import Store
    from registry.url import DEFAULT_URL, open_backend

    config = ClusterConfig.from_toml(args.config) if args.config else None
    cluster = args.cluster or (config.cluster.name if config else None)
    if not cluster:
        raise UsageError("name the exporting cluster with --cluster or --config")
    url = args.registry or (config.registry_url if config else DEFAULT_URL)
    parse_service_key(args.service)
    export = None
    if not args.remove:
        peers = [p.strip() for p in args.to.split(",") if p.strip()]
        export = Export(args.service, peers)

    async def main() -> int:
        async with open_backend(url) as backend:
            store = Store(backend)
            if export is None:
                revision = await store.remove_export(cluster, args.service)
                print(f"{args.service}: no longer exported by {cluster} (revision {revision})")
            else:
                revision = await store.set_export(cluster, export)
                print(f"{args.service}: exported by {cluster} to {', '.join(export.to)} (revision {revision})")
        return 0

    return run_async(main)
