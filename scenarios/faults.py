"""Faults a drill injects into a running demo, and how each is undone.

Each fault is an `apply()`/`restore()` pair over the demo's recorded processes (`DemoState.processes`:
role, pid, argv), so restoring a fault restarts exactly what was stopped, with the same arguments.
`Injector` remembers what it applied; `restore_all()` undoes everything still applied (in reverse
order) and is what a drill runs in `finally`, Ctrl-C included.

- `stop-endpoints`: SIGKILL the sample endpoints of a cluster (optionally one zone / one service).
- `kill-gateway`: SIGKILL a cluster's gateway. `control-restart`: SIGTERM its control plane, start it again.
- `stop-region`: SIGKILL every process of every cluster in a region.
- `registry-down`: SIGKILL the cluster's etcd (demo `--backend etcd`); restore restarts it on its data.
- `partition` / `link-loss`: iptables rules on loopback between two clusters' addresses (gateways and
  control planes bind their outgoing connections to their cluster's address, so the rule separates
  exactly those two clusters); the rules carry a comment naming the drill so none is left behind.
- `brownout`: SIGUSR1 to a fraction of a zone's endpoints (they answer `delay_ms` late), SIGUSR2 restores.
- `flapping`: the zone's endpoints are killed and restarted every `period_s / 2` until the fault ends.
"""

from __future__ import annotations

import math
import shutil
import signal
import subprocess
from collections.abc import Callable

import trio

from federation.demo import processes
from federation.demo.orchestrator import Demo, DemoState
from federation.demo.topology import plan
from scenarios.errors import DrillError
from scenarios.model import Fault

IPTABLES_COMMENT = "isthmus-drill"


class FaultFailed(DrillError):
    """A fault could not be applied or restored; the message says which and why."""


def cluster_host(cluster: str) -> str:
    return next(p.host for p in plan() if p.name == cluster)


class Injector:
    """Applies faults to one demo and undoes them."""

    def __init__(self, demo_dir, state: DemoState) -> None:
        self.state = state
        self.demo = Demo(demo_dir, state.backend)
        self.applied: list[tuple[Fault, Callable[[], object]]] = []
        self._flappers: dict[int, trio.CancelScope] = {}

    # -- helpers -------------------------------------------------------------------------------------

    def roles(self, predicate: Callable[[str, dict], bool]) -> list[str]:
        return [role for role, info in self.state.processes.items() if predicate(role, info)]

    def kill(self, roles: list[str], sig: signal.Signals = signal.SIGKILL) -> None:
        for role in roles:
            pid = self.state.processes[role]["pid"]
            if processes.alive(pid):
                processes.signal_group(pid, sig)

    async def wait_dead(self, roles: list[str]) -> None:
        with trio.move_on_after(5):
            while any(processes.alive(self.state.processes[r]["pid"]) for r in roles):  # noqa: ASYNC110 - another process: poll
                await trio.sleep(0.01)

    def restart(self, roles: list[str]) -> None:
        for role in roles:
            info = self.state.processes[role]
            if not processes.alive(info["pid"]):
                extra = {k: v for k, v in info.items() if k not in ("pid", "argv", "cluster")}
                self.demo.start(self.state, role, info["argv"], info.get("cluster"), **extra)

    def endpoint_roles(self, params: dict) -> list[str]:
        cluster, zone, service = params["cluster"], params.get("zone"), params.get("service")
        return self.roles(
            lambda role, info: "/endpoint/" in role and info.get("cluster") == cluster
            and (zone is None or info.get("zone") == zone) and (service is None or info.get("service") == service)
        )

    def iptables(self, action: str, a: str, b: str, extra: list[str]) -> None:
        if shutil.which("iptables") is None:
            raise FaultFailed("partition and link faults need iptables (apt-get install iptables)")
        for src, dst in ((a, b), (b, a)):
            rule = ["OUTPUT", "-s", src, "-d", dst, *extra, "-j", "DROP", "-m", "comment", "--comment", IPTABLES_COMMENT]
            result = subprocess.run(["iptables", action, *rule], capture_output=True, text=True)
            if result.returncode != 0 and action == "-A":
                raise FaultFailed(f"iptables refused a rule: {result.stderr.strip()}")

    # -- faults --------------------------------------------------------------------------------------

    async def apply(self, fault: Fault, nursery: trio.Nursery) -> None:
        p = dict(fault.params)
        kind = fault.kind
        if kind == "stop-endpoints":
            roles = self.endpoint_roles(p)
            if not roles:
                raise FaultFailed(f"stop-endpoints: no endpoint matches {p}")
            self.kill(roles)
            await self.wait_dead(roles)
            undo = lambda: self.restart(roles)  # noqa: E731
        elif kind in ("kill-gateway", "registry-down"):
            role = f"{p['cluster']}/{'gateway' if kind == 'kill-gateway' else 'etcd'}"
            if role not in self.state.processes:
                raise FaultFailed(f"{kind}: {p['cluster']} has no {role.split('/')[1]} in this demo"
                                  + (" (registry-down needs a demo with --backend etcd)" if kind == "registry-down" else ""))
            self.kill([role])
            await self.wait_dead([role])
            undo = lambda: self.restart([role])  # noqa: E731
        elif kind == "control-restart":
            role = f"{p['cluster']}/control"
            self.kill([role], signal.SIGTERM)
            await self.wait_dead([role])
            self.restart([role])
            undo = lambda: None  # noqa: E731
        elif kind == "stop-region":
            names = {c["name"] for c in self.state.clusters if c["region"] == p["region"]}
            roles = self.roles(lambda role, info: info.get("cluster") in names)
            self.kill(roles)
            await self.wait_dead(roles)
            # Restore in dependency order: registries, endpoints, control planes, gateways.
            order = {"etcd": 0, "endpoint": 1, "control": 2, "gateway": 3}
            roles.sort(key=lambda r: order.get(r.split("/")[1], 9))
            undo = lambda: self.restart(roles)  # noqa: E731
        elif kind in ("partition", "link-loss"):
            a, b = cluster_host(p["cluster"]), cluster_host(p["peer"])
            extra = [] if kind == "partition" else ["-m", "statistic", "--mode", "random", "--probability",
                                                    str(p["loss_percent"] / 100)]
            self.iptables("-A", a, b, extra)
            undo = lambda: self.iptables("-D", a, b, extra)  # noqa: E731
        elif kind == "brownout":
            roles = self.endpoint_roles(p)
            chosen = roles[: max(1, math.ceil(len(roles) * float(p.get("fraction", 0.5))))]
            self.kill(chosen, signal.SIGUSR1)
            undo = lambda: self.kill(chosen, signal.SIGUSR2)  # noqa: E731
        elif kind == "flapping":
            roles = self.endpoint_roles(p)
            scope = trio.CancelScope()

            async def flap() -> None:
                with scope:
                    while True:
                        self.kill(roles)
                        await self.wait_dead(roles)
                        await trio.sleep(p["period_s"] / 2)
                        self.restart(roles)
                        await trio.sleep(p["period_s"] / 2)

            nursery.start_soon(flap)

            def undo() -> None:
                scope.cancel()
                self.restart(roles)
        else:
            raise FaultFailed(f"{kind}: not supported by this runner yet")
        self.applied.append((fault, undo))

    def restore(self, fault: Fault) -> None:
        for index, (applied, undo) in enumerate(self.applied):
            if applied is fault:
                del self.applied[index]
                undo()
                return

    def restore_all(self) -> None:
        while self.applied:
            _, undo = self.applied.pop()
            undo()
