"""A service's failover policy and route rules as operators write them: read, validated, stored, removed.

The one place where the `[policies."svc"]` and `[[routes."svc"]]` values an operator writes are
checked and stored in a cluster's registry. Both writers call `handle()`: the control plane's API
(`GET/PUT/DELETE /v1/services/NAME.NS/policy|routes`, `federation.api`) and the command line's
direct registry path (`isthmus service policy|routes --registry URL`, `federation.commands.service`).

Before anything is written (a refusal moves no registry revision):
- the service must be known to the cluster: registered there, or imported from a peer (the
  `served` catalog: the control plane's merged catalog) — else `UnknownService` (the API's 404);
- a policy is read as the balancers will read it (`gateway.request_policy.validate_policy`);
- route rules are compiled as the gateways will compile them and checked against the services and
  endpoints (`validate_routes`): bad regular expressions, weights that do not add up to 100, subsets
  no endpoint matches, invalid header names are `ConfigInvalid` naming the rule (the API's 400).

Every answer is the JSON the API returns: the cluster, the service, what the registry holds for it
(`policy` or `rules`; `stored` says whether anything is) and the registry `revision` of the read or
the write. A removal of something not stored writes nothing and says `"removed": false`.
Imports `gateway` for validation only; takes the `Store` to act on (no I/O of its own).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from federation.errors import FederationError
from gateway.errors import ConfigInvalid
from gateway.request_policy import validate_policy, validate_routes
from registry.errors import ValidationError
from registry.model import Catalog, Policy, RouteRules, parse_service_key
from registry.store import Store


class UnknownService(FederationError):
    """A policy or route rules for a service the cluster neither registers nor imports."""


@attrs.frozen
class Setting:
    """One kind of per-service setting: how it is named, found in a catalog, checked and stored."""

    name: str  # the API path's last segment and the CLI verb: "policy" or "routes"
    field: str  # the answer's field holding the value: "policy" or "rules"
    empty: Any  # the value when nothing is stored
    stored_in: Callable[[Catalog], Mapping[str, Any]]
    value_of: Callable[[Any], Any]  # the stored model object -> plain JSON
    from_body: Callable[[str, Any], Any]  # a request body -> the value to validate
    validate: Callable[[str, Any, Catalog], Any]  # -> the model object to store
    put: Callable[[Store, str, Any], Any]
    delete: Callable[[Store, str, str], Any]


def _policy_body(service: str, body: Any) -> Any:
    if not isinstance(body, dict) or not body:
        raise ValidationError(f'policy "{service}": the body must be the [policies."{service}"] table as a JSON object')
    return body


def _routes_body(service: str, body: Any) -> Any:
    rules = body.get("rules") if isinstance(body, dict) else None
    if not isinstance(rules, list):
        raise ValidationError(f'routes "{service}": the body must be {{"rules": [...]}}, the [[routes."{service}"]] tables')
    return rules


POLICY = Setting(
    name="policy",
    field="policy",
    empty=None,
    stored_in=lambda catalog: catalog.policies,
    value_of=lambda policy: dict(policy.spec),
    from_body=_policy_body,
    validate=lambda service, spec, catalog: validate_policy(service, spec),
    put=lambda store, cluster, policy: store.set_policy(cluster, policy),
    delete=lambda store, cluster, service: store.remove_policy(cluster, service),
)
ROUTES = Setting(
    name="routes",
    field="rules",
    empty=[],
    stored_in=lambda catalog: catalog.routes,
    value_of=lambda routes: [dict(rule) for rule in routes.rules],
    from_body=_routes_body,
    validate=validate_routes,
    put=lambda store, cluster, routes: store.set_routes(cluster, routes),
    delete=lambda store, cluster, service: store.remove_routes(cluster, service),
)
SETTINGS = {setting.name: setting for setting in (POLICY, ROUTES)}


async def known_catalog(store: Store, cluster: str, served: Catalog | None = None) -> Catalog:
    """The cluster's catalog from the registry (now), with the services and endpoints it imports."""
    catalog = await store.load_catalog(cluster)
    if served is not None and served.cluster == cluster:
        catalog = attrs.evolve(
            catalog,
            services={**served.services, **catalog.services},
            endpoints={**served.endpoints, **catalog.endpoints},
        )
    return catalog


def _answer(setting: Setting, cluster: str, service: str, stored: Policy | RouteRules | None,
            revision: int, **extra: Any) -> dict[str, Any]:  # fmt: skip
    return {
        "cluster": cluster,
        "service": service,
        setting.field: setting.empty if stored is None else setting.value_of(stored),
        "stored": stored is not None,
        "revision": revision,
        **extra,
    }


def _unknown(service: str, catalog: Catalog) -> UnknownService:
    return UnknownService(f"{service}: no such service in cluster {catalog.cluster} (neither registered nor imported)")


async def handle(setting: Setting, store: Store, cluster: str, service: str, method: str, body: Any = None,
                 served: Catalog | None = None) -> dict[str, Any]:  # fmt: skip
    """GET, PUT (with `body`, the API's request body) or DELETE one setting of `service` in `cluster`."""
    parse_service_key(service)
    catalog = await known_catalog(store, cluster, served)
    current = setting.stored_in(catalog).get(service)
    if method == "GET":
        if current is None and service not in catalog.services:
            raise _unknown(service, catalog)
        return _answer(setting, cluster, service, current, catalog.revision)
    if method == "DELETE":
        if current is None:
            return _answer(setting, cluster, service, None, catalog.revision, removed=False)
        revision = await setting.delete(store, cluster, service)
        return _answer(setting, cluster, service, None, revision, removed=True)
    if method != "PUT":
        raise ValueError(f"{setting.name}: no {method}")
    value = setting.from_body(service, body)
    try:
        checked = setting.validate(service, value, catalog)
    except ConfigInvalid as exc:
        if service not in catalog.services:  # the rule is named; the cause is the service
            raise UnknownService(str(exc)) from None
        raise
    if service not in catalog.services:
        raise _unknown(service, catalog)
    revision = await setting.put(store, cluster, checked)
    return _answer(setting, cluster, service, checked, revision)
