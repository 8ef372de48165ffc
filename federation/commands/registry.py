"""`isthmus registry`: the catalog backend — its status, and the clusters it knows.

Verbs: `status` (backend, address, revision, reachable), `cluster add` / `cluster list`
(a registration names a cluster, and the registry refuses clusters nobody declared).
Also owns how every command finds its registry: `--registry URL`, else the config's
`[registry] url`, else `sqlite:///./isthmus-registry.db`.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from federation.commands._common import (
    add_config_option,
    add_json_option,
    add_noun,
    add_registry_option,
    add_verb,
    print_json,
    print_table,
    run_async,
)
from registry.errors import RegistryUnavailable
from registry.model import Cluster
from registry.store import Store, check_cluster_name
from registry.url import DEFAULT_URL, open_backend, parse_registry_url, unavailable


def load_config(args: argparse.Namespace) -> Any | None:
    """The cluster config named by `--config`, or None."""
    path = getattr(args, "config", None)
    if not path:
        return None
    from federation.config import ClusterConfig

    return ClusterConfig.from_toml(path)


def registry_url(args: argparse.Namespace, config: Any | None = None) -> str:
    """`--registry`, else the config's registry url, else the default file in the current directory."""
    if getattr(args, "registry", None):
        url = args.registry
    elif config is not None:
        url = config.registry_url
    else:
        url = DEFAULT_URL
    parse_registry_url(url)
    return url


@contextlib.asynccontextmanager
async def open_store(url: str) -> AsyncIterator[Store]:
    async with open_backend(url) as backend:
        yield Store(backend)


# -- status ---------------------------------------------------------------------------------------


async def _status(url: str) -> dict[str, Any]:
    parsed = parse_registry_url(url)
    try:
        async with open_backend(url, check=False) as backend:
            st = await backend.status()
            return {
                "backend": st.backend,
                "address": st.address,
                "revision": st.revision,
                "reachable": st.reachable,
                "detail": st.detail,
                "url": url,
            }
    except RegistryUnavailable as exc:
        return {
            "backend": parsed.scheme,
            "address": parsed.address,
            "revision": None,
            "reachable": False,
            "detail": exc.reason,
            "url": url,
        }


def run_status(args: argparse.Namespace) -> int:
    url = registry_url(args, load_config(args))
    status = run_async(_status, url)
    if args.json:
        print_json(status)
    else:
        print_table(
            "registry",
            ["backend", "address", "revision", "reachable", "detail"],
            [[status["backend"], status["address"], status["revision"], "yes" if status["reachable"] else "no", status["detail"]]],
        )
    if not status["reachable"]:
        raise unavailable(status["address"], status["detail"], "check --registry URL or the config's [registry] url")
    return 0


# -- clusters ------------------------------------------------------------------------------------


async def _cluster_add(url: str, cluster: Cluster) -> int:
    async with open_store(url) as store:
        return await store.add_cluster(cluster)


def run_cluster_add(args: argparse.Namespace) -> int:
    config = load_config(args)
    check_cluster_name("cluster", args.name)
    cluster = Cluster(name=args.name, region=args.region, zones=tuple(args.zone))
    revision = run_async(_cluster_add, registry_url(args, config), cluster)
    print(f"cluster {cluster.name} ({cluster.region}: {', '.join(cluster.zones)}) is known to the registry (revision {revision})")
    return 0


async def _cluster_list(url: str) -> list[Cluster]:
    async with open_store(url) as store:
        return sorted((await store.clusters()).values(), key=lambda c: c.name)


def run_cluster_list(args: argparse.Namespace) -> int:
    clusters = run_async(_cluster_list, registry_url(args, load_config(args)))
    if args.json:
        print_json([{"name": c.name, "region": c.region, "zones": list(c.zones)} for c in clusters])
    else:
        print_table("clusters", ["cluster", "region", "zones"], [[c.name, c.region, ", ".join(c.zones)] for c in clusters])
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    add_registry_option(parser)
    add_config_option(parser)


def add_parser(subparsers: Any, noun: str, help_text: str) -> None:
    verbs = add_noun(subparsers, noun, "the catalog backend: status and known clusters")

    status = add_verb(verbs, "status", "backend, address, revision and whether it is reachable (exit 2 if not)", run_status)
    _common(status)
    add_json_option(status)

    cluster = verbs.add_parser("cluster", help="clusters the registry knows", description="clusters the registry knows")
    cluster_verbs = cluster.add_subparsers(dest="cluster_verb", metavar="<verb>", parser_class=type(cluster))
    add = add_verb(
        cluster_verbs,
        "add",
        "declare a cluster (idempotent); endpoints may only be registered in declared clusters",
        run_cluster_add,
    )
    add.add_argument("name", metavar="NAME", help="cluster name (DNS-1123 label, e.g. east-1)")
    add.add_argument("--region", required=True, help="the cluster's region, e.g. us-east")
    add.add_argument("--zone", action="append", required=True, metavar="ZONE", help="a zone of the cluster (repeat for several)")
    _common(add)
    listing = add_verb(cluster_verbs, "list", "the clusters the registry knows", run_cluster_list)
    _common(listing)
    add_json_option(listing)
