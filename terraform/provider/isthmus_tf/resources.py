"""The provider's resources: `isthmus_cluster`, `isthmus_peering`, `isthmus_service_export`,
`isthmus_failover_policy`, `isthmus_route_rules`.

Each resource validates its attributes at plan time (`names`), acts through the `isthmus` command
line (`cli.Isthmus`) and reads back exactly what it applied, so that a plan right after an apply
shows no changes. A failed command becomes one Terraform diagnostic (its one-line reason as the
summary, the command and its exit status as the detail), never a Python traceback. A resource
whose cluster is no longer running reads as gone, so Terraform plans to create it again.
Must not import Isthmus itself (it runs in another virtualenv): everything goes through the CLI.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

from tf import schema, types
from tf.iface import (
    CreateContext,
    DeleteContext,
    ImportContext,
    ReadContext,
    Resource,
    UpdateContext,
    UpgradeContext,
)
from tf.utils import Diagnostics

from isthmus_tf import names
from isthmus_tf.cli import CommandFailed, Isthmus

State = dict[str, Any]


def _attr(name: str, type_: Any, description: str, **flags: Any) -> schema.Attribute:
    return schema.Attribute(name, type_, description=description, **flags)


def _dir_attr() -> schema.Attribute:
    return _attr(
        "dir",
        types.String(),
        "The demo directory (PKI, configs, data, logs), as `isthmus demo up --dir` takes it.",
        required=True,
        requires_replace=True,
    )


def _id_attr(shape: str) -> schema.Attribute:
    return _attr("id", types.String(), f"`{shape}`, the id `terraform import` takes.", computed=True)


class _TerraformJson(types.NormalizedJson):
    """JSON compared as values, and written as Terraform's `jsonencode()` writes it (keys sorted, no
    spaces, `<`, `>`, `&`, U+2028 and U+2029 escaped), so that a value read back or imported equals
    the configuration's `jsonencode([...])` and the next plan shows no change."""

    def encode(self, value: Any) -> Any:
        if not isinstance(value, list | dict):
            return super().encode(value)  # null or unknown
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                              ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):  # fmt: skip
            text = text.replace(char, escaped)
        return text


class _IsthmusResource(Resource):
    """What every resource shares: validation, the command runner, failures as diagnostics."""

    check: Callable[[dict[str, Any]], list[names.Problem]]

    def __init__(self, provider: Any) -> None:
        self.provider = provider

    @property
    def isthmus(self) -> Isthmus:
        return self.provider.isthmus

    def validate(self, diags: Diagnostics, type_name: str, config: dict[str, Any]) -> None:
        super().validate(diags, type_name, config)
        if diags.has_errors():
            return
        for problem in type(self).check(config):
            diags.add_error(problem.summary, problem.detail, path=[problem.attribute])

    def upgrade(self, ctx: UpgradeContext, version: int, old: State) -> State | None:
        return old  # schema version 0 only: nothing to upgrade

    @staticmethod
    def _fail(ctx: Any, exc: CommandFailed) -> None:
        ctx.diagnostics.add_error(exc.summary, exc.detail)

    def _import_parts(self, ctx: ImportContext, text: str, parts: int, shape: str) -> list[str] | None:
        pieces = names.split_import_id(text, parts)
        if pieces is None:
            ctx.diagnostics.add_error(
                f"import id {text!r} is not {shape}",
                f"For example: terraform import {ctx.type_name}.NAME {shape}",
            )
        return pieces


class ClusterResource(_IsthmusResource):
    """One cluster of the demo topology: `isthmus demo up --clusters NAME --bare` and `demo down`."""

    check = staticmethod(names.check_cluster_resource)

    @classmethod
    def get_name(cls) -> str:
        return "cluster"

    @classmethod
    def get_schema(cls) -> schema.Schema:
        return schema.Schema(
            description="A cluster of the local Isthmus demo: its PKI, config, control plane, gateway and sample services.",
            attributes=[
                _id_attr("<dir>:<name>"),
                _attr(
                    "name", types.String(), "east-1, east-2 or west-1.", required=True, requires_replace=True
                ),
                _dir_attr(),
                _attr(
                    "backend",
                    types.String(),
                    "The registry backend: sqlite (default) or etcd.",
                    optional=True,
                    computed=True,
                    requires_replace=True,
                    default="sqlite",
                ),
                _attr(
                    "region",
                    types.String(),
                    "The cluster's region (checked against the demo topology).",
                    optional=True,
                    computed=True,
                    requires_replace=True,
                ),
                _attr(
                    "zones",
                    types.List(types.String()),
                    "The cluster's zones (checked against the demo topology).",
                    optional=True,
                    computed=True,
                    requires_replace=True,
                ),
                _attr(
                    "outbound",
                    types.String(),
                    "host:port of the gateway's outbound listener (where apps send requests).",
                    computed=True,
                ),
                _attr(
                    "eastwest",
                    types.String(),
                    "host:port of the gateway's east-west (mTLS) listener.",
                    computed=True,
                ),
                _attr(
                    "admin",
                    types.String(),
                    "host:port of the gateway's admin and metrics listener.",
                    computed=True,
                ),
                _attr("control", types.String(), "host:port of the control plane's API.", computed=True),
                _attr(
                    "config",
                    types.String(),
                    "Path of the cluster's TOML config (for the isthmus CLI).",
                    computed=True,
                ),
                _attr("pki_dir", types.String(), "Path of the demo's PKI directory.", computed=True),
            ],
        )

    @staticmethod
    def _state(directory: str, name: str, backend: str | None, entry: dict[str, Any]) -> State:
        return {
            "id": f"{directory}:{name}",
            "name": name,
            "dir": directory,
            "backend": entry.get("backend") or backend or "sqlite",
            "region": entry.get("region"),
            "zones": list(entry.get("zones") or []),
            "outbound": entry.get("outbound"),
            "eastwest": entry.get("eastwest"),
            "admin": entry.get("admin"),
            "control": entry.get("control"),
            "config": entry.get("config"),
            "pki_dir": entry.get("pki_dir"),
        }

    def create(self, ctx: CreateContext, planned: State) -> State | None:
        directory, name, backend = planned["dir"], planned["name"], planned.get("backend") or "sqlite"
        try:
            self.isthmus.demo_up(directory, name, backend)
            entry = self.isthmus.cluster_in_demo(directory, name)
        except CommandFailed as exc:
            self._fail(ctx, exc)
            return None
        if entry is None:
            ctx.diagnostics.add_error(
                f"isthmus demo up: cluster {name} is not running in {directory} afterwards",
                f"`isthmus demo status --dir {directory} --json` does not list it; see {directory}/logs.",
            )
            return None
        return self._state(directory, name, backend, entry)

    def read(self, ctx: ReadContext, current: State) -> State | None:
        try:
            entry = self.isthmus.cluster_in_demo(current["dir"], current["name"])
        except CommandFailed as exc:
            self._fail(ctx, exc)
            return current
        if entry is None:
            return None
        return self._state(current["dir"], current["name"], current.get("backend"), entry)

    def update(self, ctx: UpdateContext, current: State, planned: State) -> State | None:
        return self.read(ReadContext(ctx.diagnostics, ctx.type_name), current)  # every input replaces

    def delete(self, ctx: DeleteContext, current: State) -> None:
        try:
            if self.isthmus.cluster_in_demo(current["dir"], current["name"]) is not None:
                self.isthmus.demo_down(current["dir"], current["name"])
        except CommandFailed as exc:
            self._fail(ctx, exc)

    def import_(self, ctx: ImportContext, id: str) -> State | None:
        pieces = self._import_parts(ctx, id, 2, "<dir>:<name>")
        if pieces is None:
            return None
        directory, name = pieces
        try:
            entry = self.isthmus.cluster_in_demo(directory, name)
        except CommandFailed as exc:
            self._fail(ctx, exc)
            return None
        if entry is None:
            ctx.diagnostics.add_error(f"cannot import {id}: cluster {name} is not running in {directory}")
            return None
        return self._state(directory, name, None, entry)


class PeeringResource(_IsthmusResource):
    """`peer` registered with `cluster`: a token from the peer, redeemed by the cluster."""

    check = staticmethod(names.check_peering_resource)

    @classmethod
    def get_name(cls) -> str:
        return "peering"

    @classmethod
    def get_schema(cls) -> schema.Schema:
        return schema.Schema(
            description="A federation link: `cluster` registers `peer` with a single-use token issued by `peer`.",
            attributes=[
                _id_attr("<dir>:<cluster>:<peer>"),
                _dir_attr(),
                _attr(
                    "cluster",
                    types.String(),
                    "The cluster that registers the peer.",
                    required=True,
                    requires_replace=True,
                ),
                _attr(
                    "peer",
                    types.String(),
                    "The cluster that issues the token and gets registered.",
                    required=True,
                    requires_replace=True,
                ),
            ],
        )

    @staticmethod
    def _state(directory: str, cluster: str, peer: str) -> State:
        return {"id": f"{directory}:{cluster}:{peer}", "dir": directory, "cluster": cluster, "peer": peer}

    def create(self, ctx: CreateContext, planned: State) -> State | None:
        directory, cluster, peer = planned["dir"], planned["cluster"], planned["peer"]
        isthmus = self.isthmus
        try:
            cluster_config = isthmus.config_of(directory, cluster)
            peer_config = isthmus.config_of(directory, peer)
            if peer not in isthmus.peers(directory, cluster_config):
                token = isthmus.shared(
                    directory, ["cluster", "token", "--for", cluster, "--config", peer_config]
                ).strip()
                if not token:
                    raise CommandFailed(f"isthmus cluster token: {peer} printed no token for {cluster}")
                isthmus.shared(
                    directory,
                    ["cluster", "register", "--token", token, "--config", cluster_config],
                    secret=token,
                )
        except CommandFailed as exc:
            self._fail(ctx, exc)
            return None
        return self._state(directory, cluster, peer)

    def read(self, ctx: ReadContext, current: State) -> State | None:
        directory, cluster, peer = current["dir"], current["cluster"], current["peer"]
        try:
            entry = self.isthmus.cluster_in_demo(directory, cluster)
            if entry is None or peer not in self.isthmus.peers(directory, entry["config"]):
                return None
        except CommandFailed as exc:
            self._fail(ctx, exc)
            return current
        return self._state(directory, cluster, peer)

    def update(self, ctx: UpdateContext, current: State, planned: State) -> State | None:
        return planned  # every input replaces

    def delete(self, ctx: DeleteContext, current: State) -> None:
        """Unlink on both sides: `register` linked both clusters."""
        directory, cluster, peer = current["dir"], current["cluster"], current["peer"]
        try:
            for here, there in ((cluster, peer), (peer, cluster)):
                entry = self.isthmus.cluster_in_demo(directory, here)
                if entry is not None and there in self.isthmus.peers(directory, entry["config"]):
                    self.isthmus.shared(directory, ["cluster", "remove", there, "--config", entry["config"]])
        except CommandFailed as exc:
            self._fail(ctx, exc)

    def import_(self, ctx: ImportContext, id: str) -> State | None:
        pieces = self._import_parts(ctx, id, 3, "<dir>:<cluster>:<peer>")
        return None if pieces is None else self._state(*pieces)


class _ServiceSetting(_IsthmusResource):
    """A setting of one service in one cluster: `isthmus service VERB NAME.NS ... --config CLUSTER.TOML`
    applies it, `--remove` on destroy; id and import `<dir>:<cluster>:<service>`.

    Subclasses name the verb, the attribute holding the value (`field`) and the verb's option taking
    it (or say how to apply a value, `_set`), how to read it back from a running cluster (`_fetch`:
    the value, or None when the cluster holds none) and what an import that finds nothing says
    (`_not_found`). Create and update apply; a cluster that is not running holds nothing.
    """

    type_name: str  # the resource is isthmus_<type_name>
    verb: str  # isthmus service <verb>
    field: str  # the attribute holding the value
    option: str = ""  # the verb's option taking the value as a comma-separated list
    texts: tuple[str, str, str, str]  # descriptions: the resource, `cluster`, `service`, the value
    value_type: Callable[[], Any] = lambda: types.List(types.String())

    @classmethod
    def get_name(cls) -> str:
        return cls.type_name

    @classmethod
    def get_schema(cls) -> schema.Schema:
        resource, cluster, service, value = cls.texts
        return schema.Schema(
            description=resource,
            attributes=[
                _id_attr("<dir>:<cluster>:<service>"),
                _dir_attr(),
                _attr("cluster", types.String(), cluster, required=True, requires_replace=True),
                _attr("service", types.String(), service, required=True, requires_replace=True),
                _attr(cls.field, cls.value_type(), value, required=True),
            ],
        )

    def _state(self, directory: str, cluster: str, service: str, value: Any) -> State:
        return {
            "id": f"{directory}:{cluster}:{service}",
            "dir": directory,
            "cluster": cluster,
            "service": service,
            self.field: value,
        }

    def _set(self, directory: str, config: str, service: str, value: Any) -> None:
        argv = ["service", self.verb, service, self.option, ",".join(value), "--config", config]
        self.isthmus.shared(directory, argv)

    def _fetch(self, directory: str, config: str, cluster: str, service: str, known: Any) -> Any | None:
        """The value `cluster` holds (`known`: the value last applied, None on import), or None."""
        raise NotImplementedError

    def _not_found(self, cluster: str, service: str) -> str:
        raise NotImplementedError

    def _read_value(self, directory: str, cluster: str, service: str, known: Any) -> Any | None:
        entry = self.isthmus.cluster_in_demo(directory, cluster)
        if entry is None:
            return None  # the cluster is not running: whatever it held is gone
        return self._fetch(directory, entry["config"], cluster, service, known)

    def _apply(self, ctx: Any, planned: State) -> State | None:
        directory, cluster, service = planned["dir"], planned["cluster"], planned["service"]
        value = planned[self.field]
        try:
            self._set(directory, self.isthmus.config_of(directory, cluster), service, value)
        except CommandFailed as exc:
            self._fail(ctx, exc)
            return None
        return self._state(directory, cluster, service, value)

    def create(self, ctx: CreateContext, planned: State) -> State | None:
        return self._apply(ctx, planned)

    def update(self, ctx: UpdateContext, current: State, planned: State) -> State | None:
        return self._apply(ctx, planned) or current

    def read(self, ctx: ReadContext, current: State) -> State | None:
        directory, cluster, service = current["dir"], current["cluster"], current["service"]
        try:
            value = self._read_value(directory, cluster, service, current.get(self.field))
        except CommandFailed as exc:
            self._fail(ctx, exc)
            return current
        return None if value is None else self._state(directory, cluster, service, value)

    def delete(self, ctx: DeleteContext, current: State) -> None:
        directory, cluster, service = current["dir"], current["cluster"], current["service"]
        try:
            entry = self.isthmus.cluster_in_demo(directory, cluster)
            if entry is not None:
                self.isthmus.shared(directory, ["service", self.verb, service, "--remove", "--config", entry["config"]])
        except CommandFailed as exc:
            self._fail(ctx, exc)

    def import_(self, ctx: ImportContext, id: str) -> State | None:
        pieces = self._import_parts(ctx, id, 3, "<dir>:<cluster>:<service>")
        if pieces is None:
            return None
        directory, cluster, service = pieces
        try:
            value = self._read_value(directory, cluster, service, None)
        except CommandFailed as exc:
            self._fail(ctx, exc)
            return None
        if value is None:
            ctx.diagnostics.add_error(f"cannot import {id}: {self._not_found(cluster, service)}")
            return None
        return self._state(directory, cluster, service, value)

    def _listed(self, directory: str, config: str, cluster: str, service: str, column: str) -> list[Any] | None:
        """`column` of the service's rows in `isthmus service list --json` (None when no row has it)."""
        found: list[Any] | None = None
        for row in self.isthmus.services(directory, config):
            if row.get("service") == service and row.get("cluster", cluster) == cluster and column in row:
                found = (found or []) + [v for v in row.get(column) or [] if v not in (found or [])]
        return found


class ServiceExportResource(_ServiceSetting):
    """`isthmus service export NAME.NS --to PEERS` in one cluster; `--remove` on destroy."""

    check = staticmethod(names.check_export_resource)
    type_name, verb, field, option = "service_export", "export", "to", "--to"
    texts = (
        "An export: lets peer clusters import a service of `cluster`.",
        "The exporting cluster.",
        "name.namespace, e.g. echo.demo.",
        'Peer clusters allowed to import it, or ["*"] for every peer.',
    )

    def _fetch(self, directory: str, config: str, cluster: str, service: str, known: Any) -> Any | None:
        exported = self._listed(directory, config, cluster, service, "exported_to")
        if not exported:
            return None
        before = list(known or [])
        return before if sorted(before) == sorted(exported) else exported  # keep the configured order

    def _not_found(self, cluster: str, service: str) -> str:
        return f"{cluster} does not export {service}"


class FailoverPolicyResource(_ServiceSetting):
    """`isthmus service policy NAME.NS --failover REGIONS` in one cluster; `--remove` on destroy.

    The policy is read back from `isthmus service list --json` when its rows carry a `failover`
    field; without it, a running cluster is taken to keep the policy last applied.
    """

    check = staticmethod(names.check_failover_resource)
    type_name, verb, field, option = "failover_policy", "policy", "failover", "--failover"
    texts = (
        "A failover policy: the order of regions a cluster's gateway tries for a service.",
        "The cluster whose gateway follows the policy.",
        "name.namespace, e.g. hello.demo.",
        'Regions in order of preference, e.g. ["eu-west", "us-east"].',
    )

    def _fetch(self, directory: str, config: str, cluster: str, service: str, known: Any) -> Any | None:
        failover = self._listed(directory, config, cluster, service, "failover")
        if failover is None:
            return None if known is None else list(known)
        return failover or None

    def _not_found(self, cluster: str, service: str) -> str:
        return f"`isthmus service list --json` of {cluster} reports no failover policy for {service}"


class RouteRulesResource(_ServiceSetting):
    """`isthmus service routes NAME.NS --file RULES.json` in one cluster (through its control plane, which
    validates them); read back with `--show --json`; `--remove` on destroy.

    `rules` is JSON (`jsonencode([...])`): route rules are nested tables of many optional shapes,
    which Terraform's object types cannot hold without a schema per shape. What is read back is
    compared as JSON and written as `jsonencode()` writes it, so a plan right after an apply or an
    import shows no change.
    """

    check = staticmethod(names.check_route_rules_resource)
    type_name, verb, field = "route_rules", "routes", "rules"
    texts = (
        "A service's route rules in one cluster, tried in order: matches on path, method, headers and "
        "source; subsets, weighted splits, header edits, rewrites, timeouts, retries and faults.",
        "The cluster whose gateway applies the rules.",
        "name.namespace, e.g. echo.demo.",
        'The rules as JSON, each a `[[routes."svc"]]` table of a cluster config: '
        'jsonencode([{ name = "canary", split = [...] }]).',
    )
    value_type = _TerraformJson

    def _set(self, directory: str, config: str, service: str, value: Any) -> None:
        with tempfile.TemporaryDirectory(prefix="isthmus-tf-") as scratch:
            path = os.path.join(scratch, "rules.json")
            with open(path, "w") as f:
                json.dump({"rules": value}, f)
            self.isthmus.shared(directory, ["service", self.verb, service, "--file", path, "--config", config])

    def _fetch(self, directory: str, config: str, cluster: str, service: str, known: Any) -> Any | None:
        try:
            argv = ["service", self.verb, service, "--show", "--json", "--config", config]
            shown = self.isthmus.shared_json(directory, argv)
        except CommandFailed as exc:
            if "no such service" in exc.summary:
                return None  # the service is gone, and nothing is stored for it
            raise
        if not isinstance(shown, dict) or not isinstance(shown.get("rules"), list):
            raise CommandFailed("isthmus service routes: --show --json printed no rules list")
        return shown["rules"] if shown.get("stored") else None

    def _not_found(self, cluster: str, service: str) -> str:
        return f"{cluster} has no route rules stored for {service}"


RESOURCES = [ClusterResource, PeeringResource, ServiceExportResource, FailoverPolicyResource, RouteRulesResource]
