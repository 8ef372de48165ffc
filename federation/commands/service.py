"""`isthmus service`: register, deregister and list services and their endpoints in the registry.

`register` writes the service and its endpoints in one transaction (nothing half-written);
the cluster must be known to the registry (`isthmus registry cluster add`, or the cluster of
`--config`, which is declared on the way). With `--ttl` the command stays in the foreground
and heart-beats the endpoints' lease until interrupted, then removes them: what a sidecar or
a process supervisor runs next to an instance. `list` shows service, cluster, locality and
endpoints healthy/total and the failover order in force.

`policy NAME.NS --failover us-east,eu-west [--outlier-... --retry-attempts N --timeout-s S]`
writes the service's failover policy (`[policies."svc"]` shape, validated as the gateways read
it; options not given keep their stored values) and `routes NAME.NS --file rules.toml` its route
rules (validated at write time against the catalog: bad regular expressions, weights that do not
add up to 100, unknown subsets, invalid header names, unknown services are refused with the rule
named and the stored rules untouched); `--show` prints what is stored, `--remove` deletes it.
With `--config` and no explicit `--registry` both go through the cluster's control plane
(`/v1/services/NAME.NS/policy|routes`, `federation.api`); with `--registry URL` they write the
registry directly, for bootstrapping without a running control plane. Either way the checks and
the write are `federation.traffic`'s; the control plane streams the result to the gateways with
the catalog. The cluster config's `[policies]` and `[routes]` are defaults that values written
here override.
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
        # A nursery's single error reaches the user as one line (federation.cli).
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
        return 0


def run_register(args: argparse.Namespace) -> int:
    config = load_config(args)
    return run_async(_register, args, config, registry_url(args, config))


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


def _failover_of(catalog: Any, key: str, defaults: dict[str, Any]) -> list[str]:
    policy = catalog.policies.get(key)
    spec = policy.spec if policy is not None else defaults.get(key) or {}
    failover = spec.get("failover", []) if isinstance(spec, dict) else []
    if isinstance(failover, dict):
        failover = failover.get("regions", [])
    return [str(region) for region in failover] if isinstance(failover, list) else []


async def _rows(url: str, only_cluster: str | None, config: Any | None = None) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    defaults: dict[str, Any] = {}
    if config is not None and isinstance(config.raw.get("policies"), dict):
        defaults = dict(config.raw["policies"])
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
                    "failover": _failover_of(catalog, key, defaults if config and name == config.cluster.name else {}),
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
    rows = run_async(_rows, registry_url(args, config), only, config)
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


# -- policy and routes ----------------------------------------------------------------------------

_POLICY_OPTIONS = (
    # (attribute, section, field, type, help)
    ("outlier_consecutive_5xx", "outlier", "consecutive_5xx", int, "eject a host after N consecutive 5xx"),
    ("outlier_consecutive_gateway_errors", "outlier", "consecutive_gateway_errors", int,
     "eject a host after N consecutive connect failures, resets or timeouts"),
    ("outlier_base_ejection_s", "outlier", "base_ejection_s", float, "first ejection lasts S seconds"),
    ("outlier_max_ejection_percent", "outlier", "max_ejection_percent", float, "eject at most P %% of hosts"),
    ("retry_attempts", "retry", "attempts", int, "tries per request, the first included"),
    ("timeout_s", "timeout", "request_timeout_s", float, "overall request timeout in seconds"),
    ("per_try_timeout_s", "timeout", "per_try_timeout_s", float, "timeout of each try in seconds"),
)


async def _served_catalog(config: Any | None) -> Any | None:
    """The control plane's merged catalog (imports included), or None when it is not reachable."""
    if config is None:
        return None
    import httpx

    from registry import codec

    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            response = await client.get(f"http://{config.control_api}/v1/catalog")
        if response.status_code != 200:
            return None
        return codec.catalog_from_json(response.json().get("catalog"), "control plane catalog")
    except (httpx.HTTPError, ValueError, ValidationError, AttributeError):
        return None


def _service_setting(args: argparse.Namespace, config: Any | None, setting: Any, method: str,
                     body: Any = None) -> dict[str, Any]:  # fmt: skip
    """One GET, PUT or DELETE of the service's policy or route rules (`federation.traffic`): through the
    cluster's control plane when `--config` is given without `--registry`, else straight to the registry."""
    from federation import traffic
    from federation.commands._client import call

    parse_service_key(args.service)
    if config is not None and not args.registry:
        if args.cluster and args.cluster != config.cluster.name:
            raise ValidationError(
                f"--cluster: {args.cluster} is not the cluster of {config.path} ({config.cluster.name}); "
                f"write another cluster's with --registry URL --cluster {args.cluster}"
            )
        return call(config, method, f"/v1/services/{args.service}/{setting.name}", json=body)

    async def direct(url: str, cluster: str) -> dict[str, Any]:
        served = await _served_catalog(config) if method != "DELETE" else None
        async with open_store(url) as store:
            return await traffic.handle(setting, store, cluster, args.service, method, body, served)

    return run_async(direct, registry_url(args, config), _cluster_name(args, config))


def _flatten(prefix: str, value: Any) -> list[list[str]]:
    if isinstance(value, dict) and value:
        return [row for key, item in value.items() for row in _flatten(f"{prefix}.{key}" if prefix else key, item)]
    if isinstance(value, list) and all(isinstance(item, str | int | float) for item in value):
        return [[prefix, ", ".join(map(str, value))]]
    return [[prefix, value if isinstance(value, str) else _compact(value)]]


def _compact(value: Any) -> str:
    import json

    return json.dumps(value, separators=(", ", ": "), sort_keys=True)


def _removed(answer: dict[str, Any], what: str) -> str:
    where = f"{answer['service']}: {what}"
    if answer.get("removed"):
        return f"{where} removed from {answer['cluster']} (revision {answer['revision']})"
    return f"{where}: none stored in {answer['cluster']}, nothing removed (revision {answer['revision']})"


def run_policy(args: argparse.Namespace) -> int:
    from federation import traffic

    config = load_config(args)
    changes: dict[str, Any] = {}
    if args.failover is not None:
        regions = [r.strip() for r in args.failover.split(",") if r.strip()]
        if not regions:
            raise ValidationError("--failover: name at least one region (e.g. us-east,eu-west), or use --remove")
        changes["failover"] = regions
    for attribute, section, field, _, _ in _POLICY_OPTIONS:
        value = getattr(args, attribute)
        if value is not None:
            changes.setdefault(section, {})[field] = value
    if changes and (args.show or args.remove):
        raise ValidationError(f"--{'show' if args.show else 'remove'}: not with policy options")
    if args.show or args.remove:
        answer = _service_setting(args, config, traffic.POLICY, "GET" if args.show else "DELETE")
    else:
        if not changes:
            raise ValidationError("service policy: give --failover or another policy option (or --show, --remove)")
        # Options not given keep their stored values.
        spec = dict(_service_setting(args, config, traffic.POLICY, "GET")["policy"] or {})
        for key, value in changes.items():
            spec[key] = {**(spec.get(key) or {}), **value} if isinstance(value, dict) else value
        answer = _service_setting(args, config, traffic.POLICY, "PUT", spec)
    if args.json:
        print_json(answer)
    elif args.show:
        title = f"policy of {answer['service']} in {answer['cluster']} (revision {answer['revision']})"
        if answer["stored"]:
            print_table(title, ["field", "value"], _flatten("", answer["policy"]))
        else:
            print(f"{answer['service']}: no policy stored in {answer['cluster']} (the config's defaults apply)")
    elif args.remove:
        print(_removed(answer, "policy"))
    else:
        failover = ", ".join(answer["policy"].get("failover", [])) or "by measured RTT"
        print(f"{answer['service']}: policy set in {answer['cluster']}, failover {failover} (revision {answer['revision']})")
    return 0


def read_rules_file(path: str, service: str) -> list[Any]:
    """Route rules from a TOML file (`[[rules]]` tables, or the cluster config's `[[routes."svc"]]`) or a
    JSON file (`*.json`: a list of rules, `{"rules": [...]}` or `{"routes": {"svc": [...]}}`)."""
    import json
    import tomllib

    kind = "JSON" if path.endswith(".json") else "TOML"
    try:
        with open(path, "rb") as f:
            raw: Any = json.load(f) if kind == "JSON" else tomllib.load(f)
    except FileNotFoundError:
        raise ValidationError(f"--file: {path}: no such file") from None
    except OSError as exc:
        raise ValidationError(f"--file: {path}: cannot read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ValidationError(f"--file: {path}: not valid {kind}: {exc}") from None
    if isinstance(raw, list):
        rules = raw
    elif isinstance(raw, dict) and isinstance(raw.get("routes"), dict):
        if service not in raw["routes"]:
            raise ValidationError(f'--file: {path}: no [[routes."{service}"]] tables')
        rules = raw["routes"][service]
    elif isinstance(raw, dict) and "rules" in raw:
        rules = raw["rules"]
    else:
        raise ValidationError(f"--file: {path}: no [[rules]] tables")
    if not isinstance(rules, list):
        raise ValidationError(f"--file: {path}: rules must be an array of tables ([[rules]])")
    return rules


def _rule_rows(rules: list[Any]) -> list[list[Any]]:
    rows = []
    for index, rule in enumerate(rules):
        rule = rule if isinstance(rule, dict) else {}
        action = {k: v for k, v in rule.items() if k not in ("name", "match")}
        rows.append([index + 1, rule.get("name", "-"), _compact(rule["match"]) if "match" in rule else "(every request)",
                     _compact(action) if action else "-"])  # fmt: skip
    return rows


def run_routes(args: argparse.Namespace) -> int:
    from federation import traffic

    config = load_config(args)
    if args.show:
        answer = _service_setting(args, config, traffic.ROUTES, "GET")
    elif args.remove:
        answer = _service_setting(args, config, traffic.ROUTES, "DELETE")
    elif args.file:
        rules = read_rules_file(args.file, args.service)
        answer = _service_setting(args, config, traffic.ROUTES, "PUT", {"rules": rules})
    else:
        raise ValidationError("--file: give the rules file (or --show, --remove)")
    if args.json:
        print_json(answer)
    elif args.show and not answer["stored"]:
        print(f"{answer['service']}: no route rules stored in {answer['cluster']} (the config's defaults apply)")
    elif args.show:
        title = f"route rules of {answer['service']} in {answer['cluster']}, in order (revision {answer['revision']})"
        print_table(title, ["#", "rule", "match", "action"], _rule_rows(answer["rules"]))
    elif args.remove:
        print(_removed(answer, "route rules"))
    else:
        print(f"{answer['service']}: {len(answer['rules'])} route rule(s) set in {answer['cluster']} "
              f"(revision {answer['revision']})")  # fmt: skip
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

    through = (
        "With --config (and no --registry) the cluster's control plane validates and writes "
        "(PUT /v1/services/NAME.NS/%s); --registry URL writes the registry directly (no control plane needed)."
    )
    policy = add_verb(verbs, "policy", "set, show or remove a service's failover policy (failover order, outlier "
                      "detection...)", run_policy)  # fmt: skip
    policy.description += ". Options not given keep their stored values. " + through % "policy"
    policy.add_argument("service", metavar="NAME.NAMESPACE", help="the service, e.g. checkout.shop")
    policy.add_argument("--failover", metavar="REGIONS", help="regions to fail over to, in order: us-east,eu-west")
    for attribute, _, _, kind, text in _POLICY_OPTIONS:
        policy.add_argument("--" + attribute.replace("_", "-"), dest=attribute, type=kind, metavar="N", help=text)
    what = policy.add_mutually_exclusive_group()
    what.add_argument("--show", action="store_true", help="print the stored policy")
    what.add_argument("--remove", action="store_true", help="remove the stored policy (config defaults apply)")
    policy.add_argument("--cluster", help="cluster name (default: the cluster of --config)")
    add_registry_option(policy)
    add_config_option(policy)
    add_json_option(policy)

    routes = add_verb(verbs, "routes", "set, show or remove a service's route rules (validated before they are "
                      "written)", run_routes)  # fmt: skip
    routes.description += (
        ". Refused rules (bad regular expressions, weights not adding up to 100, unknown subsets, invalid "
        "header names, unknown services) are named and nothing is written. " + through % "routes"
    )
    routes.add_argument("service", metavar="NAME.NAMESPACE", help="the service, e.g. checkout.shop")
    what = routes.add_mutually_exclusive_group()
    what.add_argument("--file", metavar="RULES.TOML", help='set the rules: [[rules]] tables (or [[routes."svc"]]); '
                      "a .json file holds a list of rules")  # fmt: skip
    what.add_argument("--show", action="store_true", help="print the stored rules, in the order they are tried")
    what.add_argument("--remove", action="store_true", help="remove the stored rules (config defaults apply)")
    routes.add_argument("--cluster", help="cluster name (default: the cluster of --config)")
    add_registry_option(routes)
    add_config_option(routes)
    add_json_option(routes)

    listing = add_verb(verbs, "list", "services per cluster and locality, with endpoints healthy/total", run_list)
    listing.add_argument("--cluster", help="only this cluster")
    add_registry_option(listing)
    add_config_option(listing)
    add_json_option(listing)
