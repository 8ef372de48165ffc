"""`isthmus service`: register, deregister and list services and their endpoints in the registry.

`register` writes the service and its endpoints in one transaction (nothing half-written);
the cluster must be known to the registry (`isthmus registry cluster add`, or the cluster of
`--config`, which is declared on the way). With `--ttl` the command stays in the foreground
and heart-beats the endpoints' lease until interrupted, then removes them: what a sidecar or
a process supervisor runs next to an instance. `list` shows service, cluster, locality and
endpoints healthy/total.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
from typing import Any

import trio

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
from federation.commands.registry import load_config, open_store, registry_url
from registry.errors import ValidationError
from registry.model import (
    PROTOCOLS,
    Endpoint,
    Health,
    Locality,
    Service,
    check_label,
    parse_host_port,
    parse_service_key,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(field: str, text: str) -> float:
    """`30s`, `500ms`, `2m`, `1h` or a bare number of seconds."""
    match = _DURATION.match(str(text))
    if not match:
        raise ValidationError(f"{field}: {text!r} is not a duration (e.g. 30s, 2m, 500ms)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_label(text: str) -> tuple[str, str]:
    key, sep, value = str(text).partition("=")
    if not sep or not key:
        raise ValidationError(f"--label: {text!r} is not key=value")
    if not re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_./]{0,61}[A-Za-z0-9])?", key):
        raise ValidationError(f"--label: {key!r} is not a label key (letters, digits, '-', '_', '.', '/')")
    return key, value


def _cluster_name(args: argparse.Namespace, config: Any | None) -> str:
    name = args.cluster or (config.cluster.name if config is not None else None)
    if not name:
        raise ValidationError("--cluster: which cluster? pass --cluster NAME or --config CLUSTER.TOML")
    return check_label("--cluster", name)


# -- register -------------------------------------------------------------------------------------


async def _register(args: argparse.Namespace, config: Any | None, url: str) -> int:
    name, namespace = parse_service_key(args.service)
    cluster_name = _cluster_name(args, config)
    addresses = [parse_host_port("--endpoint", text) for text in args.endpoint]
    labels = dict(parse_label(text) for text in args.label or [])
    ttl_s = parse_duration("--ttl", args.ttl) if args.ttl else None
    if ttl_s is not None and not 1 <= ttl_s <= 86_400:
        raise ValidationError(f"--ttl: {args.ttl!r} must be between 1s and 24h")
    async with open_store(url) as store:
        if config is not None and config.cluster.name == cluster_name:
            await store.add_cluster(config.cluster)
        cluster, _ = await store.get_cluster(cluster_name)
        if args.locality:
            locality = Locality.parse(args.locality)
        elif len(cluster.zones) == 1:
            locality = cluster.localities()[0]
        else:
            raise ValidationError(
                f"--locality: cluster {cluster.name} has zones {', '.join(cluster.zones)}: say which with --locality REGION/ZONE"
            )
        existing = await store.get_service(cluster_name, f"{name}.{namespace}")
        protocol = args.protocol or (existing.protocol if existing else "http")
        ports = sorted({port for _, port in addresses} | set(existing.ports if existing else ()))
        service = Service(
            name,
            namespace,
            protocol=protocol,
            ports=tuple(ports),
            gateway_mode=existing.gateway_mode if existing else "http",
        )
        endpoints = [
            Endpoint(
                service.key,
                cluster_name,
                host,
                port,
                locality,
                weight=args.weight,
                labels=labels,
                health=Health.HEALTHY,
            )
            for host, port in addresses
        ]
        where = f"{service.key} in {cluster_name} ({locality})"
        listing = ", ".join(f"{e.address}:{e.port}" for e in endpoints)
        if ttl_s is None:
            registration = await store.register_endpoints(service, endpoints, replace=args.replace)
            print(f"registered {where}: {listing} at revision {registration.revision}")
            return 0
        registration = await store.register_endpoints(service, endpoints, ttl_s=ttl_s, replace=args.replace)
        print(
            f"registered {where}: {listing} at revision {registration.revision} "
            f"with a {ttl_s:g}s TTL; heart-beating until interrupted (Ctrl-C removes them)",
            flush=True,
        )
        try:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with trio.open_nursery() as nursery:
                    await nursery.start(
                        lambda task_status: store.serve_heartbeat(
                            service, endpoints, ttl_s, registration=registration, task_status=task_status
                        )
                    )
                    async for signum in signals:
                        print(f"{signal.Signals(signum).name}: deregistering {listing}", file=sys.stderr, flush=True)
                        nursery.cancel_scope.cancel()
                        break
        except BaseExceptionGroup as group:
            raise _single(group) from None
        return 0


def run_register(args: argparse.Namespace) -> int:
    config = load_config(args)
    return run_async(_register, args, config, registry_url(args, config))


def _single(group: BaseExceptionGroup) -> BaseException:
    """The one error inside a task group's exception group (so the CLI prints it as one line)."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    return leaves[0] if len(leaves) == 1 else group


# -- deregister -----------------------------------------------------------------------------------


async def _deregister(args: argparse.Namespace, config: Any | None, url: str) -> int:
    service = args.service
    parse_service_key(service)
    cluster_name = _cluster_name(args, config)
    if not args.endpoint and not args.all:
        raise ValidationError("--endpoint: name the endpoint(s) to remove, or pass --all to remove the service")
    async with open_store(url) as store:
        if args.all:
            revision = await store.deregister(cluster_name, service)
            print(f"deregistered {service} and all its endpoints from {cluster_name} at revision {revision}")
            return 0
        for text in args.endpoint:
            host, port = parse_host_port("--endpoint", text)
            endpoint_id = f"{cluster_name}/{host}:{port}"
            revision = await store.deregister(cluster_name, service, endpoint_id)
            print(f"deregistered {text} of {service} from {cluster_name} at revision {revision}")
    return 0


def run_deregister(args: argparse.Namespace) -> int:
    config = load_config(args)
    return run_async(_deregister, args, config, registry_url(args, config))


# -- list -----------------------------------------------------------------------------------------


async def _rows(url: str, only_cluster: str | None) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    async with open_store(url) as store:
        clusters = await store.clusters()
        if only_cluster is not None:
            await store.get_cluster(only_cluster)
            clusters = {only_cluster: clusters[only_cluster]}
        for name in sorted(clusters):
            catalog = await store.load_catalog(name)
            for key, service in catalog.services.items():
                export = catalog.exports.get(key)
                base = {
                    "service": key,
                    "cluster": name,
                    "protocol": service.protocol,
                    "exported_to": list(export.to) if export else [],
                    "healthy": 0,
                    "total": 0,
                }
                mine = [e for e in catalog.endpoints.values() if e.service == key]
                if not mine:
                    rows[(key, name, "")] = {**base, "locality": ""}
                for e in mine:
                    row = rows.setdefault((key, name, str(e.locality)), {**base, "locality": str(e.locality)})
                    row["total"] += 1
                    row["healthy"] += e.health is Health.HEALTHY
    return [rows[k] for k in sorted(rows)]


def run_list(args: argparse.Namespace) -> int:
    config = load_config(args)
    only = check_label("--cluster", args.cluster) if args.cluster else None
    rows = run_async(_rows, registry_url(args, config), only)
    if args.json:
        print_json(rows)
    else:
        print_table(
            "services",
            ["service", "cluster", "locality", "endpoints (healthy/total)", "protocol", "exported to"],
            [
                [r["service"], r["cluster"], r["locality"] or "-", f"{r['healthy']}/{r['total']}", r["protocol"], ", ".join(r["exported_to"]) or "-"]
                for r in rows
            ],
        )
    return 0


# -- the parser -----------------------------------------------------------------------------------


def add_parser(subparsers: Any, noun: str, help_text: str) -> None:
    from federation.commands._export import add_export_verb

    verbs = add_noun(subparsers, noun, "register, deregister, export and list services in the registry")
    add_export_verb(verbs)

    register = add_verb(
        verbs,
        "register",
        "register endpoints of a service (service and endpoints in one transaction)",
        run_register,
    )
    register.description = (
        "Register endpoints of NAME.NAMESPACE in a cluster the registry knows. Without --ttl the endpoints stay "
        "until deregistered. With --ttl the command stays in the foreground, heart-beating every ttl/3, and "
        "removes the endpoints when interrupted (Ctrl-C or SIGTERM); if it dies, they vanish after the TTL."
    )
    register.add_argument("service", metavar="NAME.NAMESPACE", help="the service, e.g. checkout.shop")
    register.add_argument("--cluster", help="cluster name (default: the cluster of --config)")
    register.add_argument("--locality", metavar="REGION/ZONE", help="where the endpoints run (default: the cluster's only zone)")
    register.add_argument("--endpoint", action="append", required=True, metavar="HOST:PORT", help="an endpoint (repeat for several)")
    register.add_argument("--protocol", choices=PROTOCOLS, help="the service's protocol (default: as registered, else http)")
    register.add_argument("--weight", type=int, default=1, metavar="N", help="load-balancing weight 1-1000 (default: 1)")
    register.add_argument("--label", action="append", metavar="KEY=VALUE", help="an endpoint label (repeat for several)")
    register.add_argument("--ttl", metavar="DURATION", help="e.g. 30s: stay in the foreground and heart-beat (see above)")
    register.add_argument("--replace", action="store_true", help="overwrite endpoints already registered with the same id")
    add_registry_option(register)
    add_config_option(register)

    deregister = add_verb(verbs, "deregister", "remove endpoints of a service (or the whole service with --all)", run_deregister)
    deregister.add_argument("service", metavar="NAME.NAMESPACE", help="the service, e.g. checkout.shop")
    deregister.add_argument("--cluster", help="cluster name (default: the cluster of --config)")
    deregister.add_argument("--endpoint", action="append", metavar="HOST:PORT", help="an endpoint to remove (repeat for several)")
    deregister.add_argument("--all", action="store_true", help="remove the service, its endpoints and its export")
    add_registry_option(deregister)
    add_config_option(deregister)

    listing = add_verb(verbs, "list", "services per cluster and locality, with endpoints healthy/total", run_list)
    listing.add_argument("--cluster", help="only this cluster")
    add_registry_option(listing)
    add_config_option(listing)
    add_json_option(listing)
