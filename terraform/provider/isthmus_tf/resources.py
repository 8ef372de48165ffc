"""The provider's resources: `isthmus_cluster`, `isthmus_peering`, `isthmus_service_export`,
`isthmus_failover_policy`.

Each resource validates its attributes at plan time (`names`), acts through the `isthmus` command
line (`cli.Isthmus`) and reads back exactly what it applied, so that a plan right after an apply
shows no changes. A failed command becomes one Terraform diagnostic (its one-line reason as the
summary, the command and its exit status as the detail), never a Python traceback. A resource
whose cluster is no longer running reads as gone, so Terraform plans to create it again.
Must not import Isthmus itself (it runs in another virtualenv): everything goes through the CLI.
"""

from __future__ import annotations

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


class ServiceExportResource(_IsthmusResource):
    """`isthmus service export NAME.NS --to PEERS` in one cluster; `--remove` on destroy."""

    check = staticmethod(names.check_export_resource)

    @classmethod
    def get_name(cls) -> str:
        return "service_export"

    @classmethod
    def get_schema(cls) -> schema.Schema:
        return schema.Schema(
            description="An export: lets peer clusters import a service of `cluster`.",
            attributes=[
                _id_attr("<dir>:<cluster>:<service>"),
                _dir_attr(),
                _attr(
                    "cluster", types.String(), "The exporting cluster.", required=True, requires_replace=True
                ),
                _attr(
                    "service",
                    types.String(),
                    "name.namespace, e.g. echo.demo.",
                    required=True,
                    requires_replace=True,
                ),
                _attr(
                    "to",
                    types.List(types.String()),
                    'Peer clusters allowed to import it, or ["*"] for every peer.',
                    required=True,
                ),
            ],
        )

    @staticmethod
    def _state(directory: str, cluster: str, service: str, to: list[str]) -> State:
        return {
            "id": f"{directory}:{cluster}:{service}",
            "dir": directory,
            "cluster": cluster,
            "service": service,
            "to": to,
        }

    def _apply(self, ctx: Any, planned: State) -> State | None:
        directory, cluster, service, to = (
            planned["dir"],
            planned["cluster"],
            planned["service"],
            list(planned["to"]),
        )
        try:
            config = self.isthmus.config_of(directory, cluster)
            self.isthmus.shared(
                directory, ["service", "export", service, "--to", ",".join(to), "--config", config]
            )
        except CommandFailed as exc:
            self._fail(ctx, exc)
            return None
        return self._state(directory, cluster, service, to)

    def create(self, ctx: CreateContext, planned: State) -> State | None:
        return self._apply(ctx, planned)

    def update(self, ctx: UpdateContext, current: State, planned: State) -> State | None:
        return self._apply(ctx, planned) or current

    def _exported_to(self, directory: str, cluster: str, service: str) -> list[str] | None:
        entry = self.isthmus.cluster_in_demo(directory, cluster)
        if entry is None:
            return None
        exported: list[str] = []
        for row in self.isthmus.services(directory, entry["config"]):
            if row.get("service") == service and row.get("cluster", cluster) == cluster:
                exported += [p for p in row.get("exported_to") or [] if p not in exported]
        return exported or None

    def read(self, ctx: ReadContext, current: State) -> State | None:
        directory, cluster, service = current["dir"], current["cluster"], current["service"]
        try:
            exported = self._exported_to(directory, cluster, service)
        except CommandFailed as exc:
            self._fail(ctx, exc)
            return current
        if exported is None:
            return None
        before = list(current.get("to") or [])
        to = before if sorted(before) == sorted(exported) else exported  # keep the configured order
        return self._state(directory, cluster, service, to)

    def delete(self, ctx: DeleteContext, current: State) -> None:
        directory, cluster, service = current["dir"], current["cluster"], current["service"]
        try:
            entry = self.isthmus.cluster_in_demo(directory, cluster)
            if entry is not None:
                self.isthmus.shared(
                    directory, ["service", "export", service, "--remove", "--config", entry["config"]]
                )
        except CommandFailed as exc:
            self._fail(ctx, exc)

    def import_(self, ctx: ImportContext, id: str) -> State | None:
        pieces = self._import_parts(ctx, id, 3, "<dir>:<cluster>:<service>")
        if pieces is None:
            return None
        directory, cluster, service = pieces
        try:
            exported = self._exported_to(directory, cluster, service)
        except CommandFailed as exc:
            self._fail(ctx, exc)
            return None
        if exported is None:
            ctx.diagnostics.add_error(f"cannot import {id}: {cluster} does not export {service}")
            return None
        return self._state(directory, cluster, service, exported)


class FailoverPolicyResource(_IsthmusResource):
    """`isthmus service policy NAME.NS --failover REGIONS` in one cluster; `--remove` on destroy.

    The policy is read back from `isthmus service list --json` when its rows carry a `failover`
    field; without it, a running cluster is taken to keep the policy last applied.
    """

    check = staticmethod(names.check_failover_resource)

    @classmethod
    def get_name(cls) -> str:
        return "failover_policy"

    @classmethod
    def get_schema(cls) -> schema.Schema:
        return schema.Schema(
            description="A failover policy: the order of regions a cluster's gateway tries for a service.",
            attributes=[
                _id_attr("<dir>:<cluster>:<service>"),
                _dir_attr(),
                _attr(
                    "cluster",
                    types.String(),
                    "The cluster whose gateway follows the policy.",
                    required=True,
                    requires_replace=True,
                ),
                _attr(
                    "service",
                    types.String(),
                    "name.namespace, e.g. hello.demo.",
                    required=True,
                    requires_replace=True,
                ),
                _attr(
                    "failover",
                    types.List(types.String()),
                    'Regions in order of preference, e.g. ["eu-west", "us-east"].',
                    required=True,
                ),
            ],
        )

    @staticmethod
    def _state(directory: str, cluster: str, service: str, failover: list[str]) -> State:
        return {
            "id": f"{directory}:{cluster}:{service}",
            "dir": directory,
            "cluster": cluster,
            "service": service,
            "failover": failover,
        }

    def _apply(self, ctx: Any, planned: State) -> State | None:
        directory, cluster, service = planned["dir"], planned["cluster"], planned["service"]
        failover = list(planned["failover"])
        try:
            config = self.isthmus.config_of(directory, cluster)
            self.isthmus.shared(
                directory,
                ["service", "policy", service, "--failover", ",".join(failover), "--config", config],
            )
        except CommandFailed as exc:
            self._fail(ctx, exc)
            return None
        return self._state(directory, cluster, service, failover)

    def create(self, ctx: CreateContext, planned: State) -> State | None:
        return self._apply(ctx, planned)

    def update(self, ctx: UpdateContext, current: State, planned: State) -> State | None:
        return self._apply(ctx, planned) or current

    def _listed(self, directory: str, cluster: str, service: str) -> tuple[bool, list[str] | None]:
        """(cluster running, the failover list `service list` reports or None when it reports none)."""
        entry = self.isthmus.cluster_in_demo(directory, cluster)
        if entry is None:
            return False, None
        for row in self.isthmus.services(directory, entry["config"]):
            if row.get("service") == service and row.get("cluster", cluster) == cluster and "failover" in row:
                return True, list(row.get("failover") or [])
        return True, None

    def read(self, ctx: ReadContext, current: State) -> State | None:
        directory, cluster, service = current["dir"], current["cluster"], current["service"]
        try:
            running, failover = self._listed(directory, cluster, service)
        except CommandFailed as exc:
            self._fail(ctx, exc)
            return current
        if not running or failover == []:
            return None
        return self._state(
            directory, cluster, service, list(current["failover"]) if failover is None else failover
        )

    def delete(self, ctx: DeleteContext, current: State) -> None:
        directory, cluster, service = current["dir"], current["cluster"], current["service"]
        try:
            entry = self.isthmus.cluster_in_demo(directory, cluster)
            if entry is not None:
                self.isthmus.shared(
                    directory, ["service", "policy", service, "--remove", "--config", entry["config"]]
                )
        except CommandFailed as exc:
            self._fail(ctx, exc)

    def import_(self, ctx: ImportContext, id: str) -> State | None:
        pieces = self._import_parts(ctx, id, 3, "<dir>:<cluster>:<service>")
        if pieces is None:
            return None
        directory, cluster, service = pieces
        try:
            running, failover = self._listed(directory, cluster, service)
        except CommandFailed as exc:
            self._fail(ctx, exc)
            return None
        if not running or not failover:
            ctx.diagnostics.add_error(
                f"cannot import {id}: `isthmus service list --json` of {cluster} reports no failover policy for {service}"
            )
            return None
        return self._state(directory, cluster, service, failover)


RESOURCES = [ClusterResource, PeeringResource, ServiceExportResource, FailoverPolicyResource]
