"""Faults a drill injects into a running demo, and how each is undone.

Each fault is an `apply()`/`restore()` pair over the demo's recorded processes (`DemoState.processes`:
role, pid, argv), so restoring a fault restarts exactly what was stopped, with the same arguments.
`Injector` remembers what it applied; `restore_all()` undoes everything still applied (in reverse
order) and is what a drill runs in `finally`, Ctrl-C included.

- `stop-endpoints`: SIGKILL the sample endpoints of a cluster (optionally one zone / one service).
- `kill-gateway`: SIGKILL a cluster's gateway. `control-restart`: SIGTERM its control plane, start it again.
- `stop-region`: SIGKILL every process of every cluster in a region.
- `registry-down`: SIGKILL the cluster's etcd (demo `--backend etcd`); restore restarts it on its data.
- `partition` / `link-loss` / `link-latency` act on the link between two clusters. A cluster's packets
  are told apart by process, not by address (a gateway or control plane may dial its peers from
  127.0.0.1, as the demo's did when this was written): the fault moves each side's gateway and control
  plane into a cgroup (v2) of its own and matches their packets with iptables' `cgroup` match, with the
  drill's comment on every rule so none is left behind. A socket keeps the cgroup it was made in, so
  the connections those processes already had to the other cluster are cut (`ss -K`) and reconnect
  under the rules; restore moves the processes back. `partition` drops every packet, `link-loss` drops
  `loss_percent` of them (iptables `statistic`).
- `brownout`: SIGUSR1 to a fraction of a zone's endpoints (they answer `delay_ms` late), SIGUSR2 restores.
- `flapping`: the zone's endpoints are killed and restarted every `period_s / 2` until the fault ends.
- `cert-rotation`: the cluster's gateway identity is reissued (`certs.pki.issue_identity`) and the running
  gateway takes it up. `isthmus gateway` catches SIGHUP and swaps its contexts in place (open connections
  keep the context they were accepted with); the fault is in force once the gateway's admin `/certs`
  names the new leaf's serial (a SIGHUP is handled asynchronously). A gateway that does not catch SIGHUP
  gets a graceful restart instead: SIGTERM (the old process stops accepting and drains its open
  connections, which keep the old certificate) and the same argv respawned as soon as its ports are free.
- `cert-expired`: the gateway's leaf is replaced by one that expired an hour ago and the gateway takes it
  up the same way; every new handshake to (and from) it fails, so callers must route around the cluster.
  Restore issues a fresh leaf and takes it up again.
- `link-latency`: `latency_ms` added each way between two clusters. A relay (`scenarios.relay`) in the
  drill process forwards to each side's east-west listener; an iptables `nat` rule sends the other side's
  new connections to that listener through it (the cgroup match, as above). Restore sets the relays'
  delay to zero, so the connections open through them heal without a cut, and moves the processes out
  of the cgroup, so their new connections go direct; the relays, nat rules and cgroups go when the
  drill ends (deleting a nat rule resets the connections it translated). Cutting the open connections
  when the fault starts fails the requests in flight on them: the caller's retries must absorb that.

`preflight(scenario, state)` refuses, before anything starts, a fault this machine (or the attached
demo) cannot take: iptables with the nat table, a writable cgroup v2 hierarchy and `ss` for link
faults; an etcd-backed demo for `registry-down`; the named clusters and gateways.
"""

from __future__ import annotations

import datetime as dt
import inspect
import math
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from federation.demo import processes
from federation.demo.orchestrator import Demo, DemoError, DemoState, port_is_free, wait_listening
from federation.demo.topology import plan
from scenarios.errors import DrillError, ScenarioInvalid
from scenarios.model import Fault, Scenario

IPTABLES_COMMENT = "isthmus-drill"
# How a fault is undone: a plain call, or a coroutine when undoing waits (a gateway restarting).
Undo = Callable[[], Awaitable[None] | object]
IPTABLES_FAULTS = ("partition", "link-loss", "link-latency")
# A restarted gateway binds its ports again once the old process has let go of them.
PORT_RELEASE_DEADLINE_S = 15.0
# A gateway sent SIGHUP presents the reissued leaf within this (it reads three files and builds two contexts).
RELOAD_DEADLINE_S = 10.0
GATEWAY_START_DEADLINE_S = 30.0


class FaultFailed(DrillError):
    """A fault could not be applied or restored; the message says which and why."""


def cluster_host(cluster: str) -> str:
    return next(p.host for p in plan() if p.name == cluster)


def catches(pid: int, sig: signal.Signals) -> bool:
    """True when process `pid` installed a handler for `sig` (from /proc/<pid>/status `SigCgt`)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return False
    return False


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def iptables_problem(nat: bool = False) -> str | None:
    """Why this machine cannot take the drill's iptables rules (None when it can)."""
    if shutil.which("iptables") is None:
        return "needs iptables (apt-get install iptables)"
    table = ["-t", "nat"] if nat else []
    result = _run(["iptables", *table, "-L", "OUTPUT", "-n"])
    if result.returncode != 0:
        return f"needs iptables{' with the nat table' if nat else ''} as root ({result.stderr.strip() or 'refused'})"
    return None


def drill_rules() -> list[str]:
    """Every iptables rule (filter and nat OUTPUT) carrying the drill's comment, as `iptables -S` prints it."""
    rules = []
    for table in ("filter", "nat"):
        result = _run(["iptables", "-t", table, "-S", "OUTPUT"])
        rules += [f"{table}: {line}" for line in result.stdout.splitlines() if IPTABLES_COMMENT in line]
    return rules


def preflight(scenario: Scenario, state: DemoState | None = None) -> None:
    """Refuse, before anything starts, a fault this machine (or the attached demo) cannot take."""
    source = str(scenario.path or scenario.name)
    for index, fault in enumerate(scenario.faults):
        field = f"{source}: faults[{index}] ({fault.kind})"
        if fault.kind in IPTABLES_FAULTS:
            problem = iptables_problem(nat=fault.kind == "link-latency") or cgroup_problem()
            if problem is not None:
                raise ScenarioInvalid(f"{field}: {problem}")
        if fault.kind in IPTABLES_FAULTS and shutil.which("ss") is None:
            raise ScenarioInvalid(f"{field}: needs ss (iproute2) to move open connections under the fault")
        if state is None:
            continue
        for key in ("cluster", "peer"):
            name = fault.params.get(key)
            if name is not None and state.cluster(name) is None:
                raise ScenarioInvalid(f"{field}: the attached demo in {state.dir} has no cluster {name}")
        if fault.kind == "registry-down" and state.backend != "etcd":
            raise ScenarioInvalid(f"{field}: needs a demo with --backend etcd (the attached one uses {state.backend})")
        if fault.kind in ("cert-rotation", "cert-expired", "kill-gateway") and \
                f"{fault.params['cluster']}/gateway" not in state.processes:
            raise ScenarioInvalid(f"{field}: the attached demo runs no gateway for {fault.params['cluster']}")


def cgroup2_root() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (None without one)."""
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "cgroup2":
                    return Path(parts[1])
    except OSError:
        return None
    return None


def cgroup_problem() -> str | None:
    """Why link faults cannot tell one cluster's packets apart on this machine (None when they can)."""
    root = cgroup2_root()
    if root is None:
        return "needs a cgroup v2 hierarchy (mounted cgroup2) to tell the clusters' packets apart"
    if not os.access(root, os.W_OK):
        return f"needs write access to the cgroup v2 hierarchy at {root} (run as root)"
    return None


def cgroup_of(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def connections_of(pids: set[int], dst_host: str) -> list[tuple[str, str]]:
    """The open TCP connections (local, peer) that processes `pids` have to `dst_host`."""
    result = _run(["ss", "-tnpH", "state", "established", "dst", dst_host])
    found = []
    for line in result.stdout.splitlines():
        parts = line.split()
        owners = {int(x) for x in re.findall(r"pid=(\d+)", line)}
        if len(parts) >= 4 and owners & pids:
            found.append((parts[-3], parts[-2]) if parts[-1].startswith("users:") else (parts[-2], parts[-1]))
    return found


def cut(connections: list[tuple[str, str]]) -> None:
    """Abort these connections (`ss -K`): both ends see a reset, as with a cut cable."""
    for local, peer in connections:
        _run(["ss", "-K", "-tn", "src", local, "dst", peer])


class Isolation:
    """One cluster's gateway and control plane in a cgroup of their own, so iptables can match their packets."""

    def __init__(self, root: Path, cluster: str, pids: list[int]) -> None:
        self.root = root
        self.path = f"{IPTABLES_COMMENT}-{os.getpid()}-{cluster}"
        self.pids = pids
        self.original: dict[int, str] = {}

    def enter(self) -> None:
        directory = self.root / self.path
        try:
            directory.mkdir(exist_ok=True)
            for pid in self.pids:
                origin = cgroup_of(pid)
                if origin is None:
                    continue
                self.original[pid] = origin
                (directory / "cgroup.procs").write_text(str(pid))
        except OSError as exc:
            self.leave()
            raise FaultFailed(f"cannot move processes into the cgroup {directory}: {exc.strerror or exc}") from None

    def move_back(self) -> None:
        """Every moved process back where it was (sockets keep the cgroup they were made in)."""
        for pid, origin in self.original.items():
            if processes.alive(pid):
                try:
                    (self.root / origin.lstrip("/") / "cgroup.procs").write_text(str(pid))
                except OSError:
                    pass  # the process is gone or its old cgroup with it: nothing left to move back
        self.original.clear()

    def remove(self) -> None:
        try:
            (self.root / self.path).rmdir()
        except OSError:
            pass  # already gone

    def leave(self) -> None:
        self.move_back()
        self.remove()


class Injector:
    """Applies faults to one demo and undoes them."""

    def __init__(self, demo_dir, state: DemoState) -> None:
        self.state = state
        self.demo = Demo(Path(demo_dir), state.backend)
        self.applied: list[tuple[Fault, Undo]] = []
        # Gateways replaced by a graceful restart: they drain on their own; stopped for good at the end.
        self.retiring: list[int] = []
        # How each certificate fault was taken up ("reloaded" or "restarted"), for the report.
        self.notes: list[str] = []
        # Cleanups that wait for the drill's end (after its relays have closed), in order.
        self.finalizers: list[Callable[[], None]] = []
        # cluster -> (its isolation cgroup, how many applied link faults use it)
        self._isolated: dict[str, tuple[Isolation, int]] = {}

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

    def spawn(self, role: str) -> int:
        info = self.state.processes[role]
        extra = {k: v for k, v in info.items() if k not in ("pid", "argv", "cluster")}
        return self.demo.start(self.state, role, info["argv"], info.get("cluster"), **extra)

    def restart(self, roles: list[str]) -> None:
        for role in roles:
            if not processes.alive(self.state.processes[role]["pid"]):
                self.spawn(role)

    def endpoint_roles(self, params: dict) -> list[str]:
        cluster, zone, service = params["cluster"], params.get("zone"), params.get("service")
        return self.roles(
            lambda role, info: "/endpoint/" in role and info.get("cluster") == cluster
            and (zone is None or info.get("zone") == zone) and (service is None or info.get("service") == service)
        )

    # -- links ---------------------------------------------------------------------------------------

    def isolate(self, cluster: str) -> Isolation:
        """Put `cluster`'s gateway and control plane into their own cgroup (shared by the faults on them)."""
        if cluster in self._isolated:
            isolation, count = self._isolated[cluster]
            self._isolated[cluster] = (isolation, count + 1)
            return isolation
        problem = iptables_problem() or cgroup_problem()
        if problem is not None:
            raise FaultFailed(f"link faults {problem}")
        pids = [self.state.processes[r]["pid"] for r in (f"{cluster}/gateway", f"{cluster}/control")
                if r in self.state.processes and processes.alive(self.state.processes[r]["pid"])]
        isolation = Isolation(cgroup2_root(), cluster, pids)  # type: ignore[arg-type]
        isolation.enter()
        self._isolated[cluster] = (isolation, 1)
        return isolation

    def release(self, cluster: str, *, keep_cgroup: bool = False) -> None:
        """Undo one `isolate(cluster)`; with `keep_cgroup`, the cgroup itself goes only when the drill ends."""
        if cluster not in self._isolated:
            return
        isolation, count = self._isolated[cluster]
        if count > 1:
            self._isolated[cluster] = (isolation, count - 1)
            return
        del self._isolated[cluster]
        isolation.move_back()
        if keep_cgroup:
            self.finalizers.append(isolation.remove)
        else:
            isolation.remove()

    def link_rules(self, action: str, rules: list[list[str]], table: str = "filter") -> None:
        for rule in rules:
            result = _run(["iptables", "-t", table, action, "OUTPUT", *rule, "-m", "comment", "--comment", IPTABLES_COMMENT])
            if result.returncode != 0 and action == "-A":
                raise FaultFailed(f"iptables refused a rule ({' '.join(rule)}): {result.stderr.strip()}")

    async def break_link(self, a: str, b: str, nursery: trio.Nursery, *, loss_percent: float | None = None,
                         latency_ms: float | None = None) -> Undo:
        """Partition (or lose packets on, or slow) the link between clusters `a` and `b`; returns the undo."""
        from scenarios.relay import Delay, serve_delay_relay

        delay = Delay((latency_ms or 0) / 1000)
        sides = [(a, b), (b, a)]
        filter_rules: list[list[str]] = []
        nat_rules: list[list[str]] = []
        scopes: list[trio.CancelScope] = []
        isolated: list[str] = []

        async def run_relay(target: str, task_status=trio.TASK_STATUS_IGNORED) -> None:
            scope = trio.CancelScope()
            scopes.append(scope)
            with scope:
                await serve_delay_relay(target, delay, task_status=task_status)

        def undo() -> None:
            self.link_rules("-D", filter_rules)
            # A connection made through a relay stays NATed to it: deleting the nat rule now would reset it.
            # The relay heals instead (no delay), and the processes leave the cgroup, so their new
            # connections go direct; the rules and cgroups go when the drill ends and the relays close.
            delay.seconds = 0.0
            if nat_rules:
                self.finalizers.append(lambda: self.link_rules("-D", nat_rules, table="nat"))
            for cluster in isolated:
                self.release(cluster, keep_cgroup=bool(nat_rules))

        try:
            for src, dst in sides:
                isolation = self.isolate(src)
                isolated.append(src)
                match = ["-m", "cgroup", "--path", isolation.path, "-d", cluster_host(dst)]
                if latency_ms is not None:
                    target = self._cluster(dst)["eastwest"]
                    host, port = _split(target)
                    relay_port = await nursery.start(run_relay, target)
                    nat_rules.append(["-p", "tcp", *match, "--dport", str(port), "-j", "DNAT",
                                      "--to-destination", f"127.0.0.1:{relay_port}"])
                    self.link_rules("-A", nat_rules[-1:], table="nat")
                else:
                    extra = [] if loss_percent is None else ["-m", "statistic", "--mode", "random", "--probability",
                                                             f"{loss_percent / 100:.4f}"]
                    filter_rules.append([*match, *extra, "-j", "DROP"])
                    self.link_rules("-A", filter_rules[-1:])
            # Sockets keep the cgroup they were made in: cut the open ones so they reconnect under the rules.
            for src, dst in sides:
                cut(connections_of(set(self._isolated[src][0].original), cluster_host(dst)))
        except BaseException:
            undo()
            raise
        return undo

    def _cluster(self, name: str) -> dict:
        cluster = self.state.cluster(name)
        if cluster is None:
            raise FaultFailed(f"the demo has no cluster {name}")
        return cluster

    # -- certificates --------------------------------------------------------------------------------

    def _issue_gateway_leaf(self, cluster: str, *, expired: bool) -> None:
        from certs import pki
        from certs.errors import CertsError

        pki_dir = Path(self._cluster(cluster)["pki_dir"])
        try:
            if expired:
                # Valid for an hour that ended an hour ago: every peer refuses it in the handshake.
                pki.issue_identity(pki_dir, cluster, "gateway", dns_names=("localhost",), hours=1,
                                   not_before=pki.utcnow() - dt.timedelta(hours=2))
            else:
                pki.issue_identity(pki_dir, cluster, "gateway", dns_names=("localhost",))
        except (CertsError, OSError) as exc:
            raise FaultFailed(f"reissuing {cluster}'s gateway identity under {pki_dir}: {exc}") from None

    async def take_up_identity(self, cluster: str) -> str:
        """Make `cluster`'s running gateway use the identity now on disk; returns how ("reloaded"/"restarted")."""
        role = f"{cluster}/gateway"
        if role not in self.state.processes:
            raise FaultFailed(f"{cluster} runs no gateway in this demo")
        pid = self.state.processes[role]["pid"]
        if processes.alive(pid) and catches(pid, signal.SIGHUP):
            os.kill(pid, signal.SIGHUP)  # the gateway swaps its contexts; open connections keep theirs
            await self._wait_presenting(cluster)
            return "reloaded"
        # Graceful restart: the old process stops accepting and drains; the new one binds the freed ports.
        info = self._cluster(cluster)
        addresses = [info["eastwest"], info["outbound"], info["admin"]]
        if processes.alive(pid):
            processes.signal_group(pid, signal.SIGTERM)
            self.retiring.append(pid)
        with trio.move_on_after(PORT_RELEASE_DEADLINE_S):
            while processes.alive(pid) and not all(port_is_free(*_split(a)) for a in addresses):  # noqa: ASYNC110
                await trio.sleep(0.01)
        new_pid = self.spawn(role)
        try:
            await wait_listening(info["outbound"], GATEWAY_START_DEADLINE_S, new_pid)
            await wait_listening(info["eastwest"], GATEWAY_START_DEADLINE_S, new_pid)
        except DemoError as exc:
            raise FaultFailed(f"{cluster}'s gateway did not come back after the restart: {exc}") from None
        return "restarted"

    async def _wait_presenting(self, cluster: str) -> None:
        """Poll the gateway's admin `/certs` until it names the leaf now on disk."""
        import httpx

        from certs.errors import CertsError
        from certs.store import load_identity

        info = self._cluster(cluster)
        try:
            wanted = format(load_identity(info["pki_dir"], cluster, "gateway").serial_number, "x")
        except (CertsError, OSError) as exc:
            raise FaultFailed(f"reading {cluster}'s reissued gateway identity: {exc}") from None
        last = "no answer"
        async with httpx.AsyncClient(timeout=2.0) as client:
            with trio.move_on_after(RELOAD_DEADLINE_S):
                while True:
                    try:
                        response = await client.get(f"http://{info['admin']}/certs")
                        serial = response.json().get("serial") if response.status_code == 200 else None
                        if serial == wanted:
                            return
                        last = f"serial {serial}" if serial else f"HTTP {response.status_code}"
                    except (httpx.HTTPError, ValueError, AttributeError) as exc:
                        last = type(exc).__name__
                    await trio.sleep(0.05)
        raise FaultFailed(f"{cluster}'s gateway still does not present the reissued leaf (serial {wanted}) "
                          f"{RELOAD_DEADLINE_S:.0f} s after SIGHUP (admin /certs: {last}); see its log")

    # -- faults --------------------------------------------------------------------------------------

    async def apply(self, fault: Fault, nursery: trio.Nursery) -> None:
        """Apply `fault`; its undo is recorded before any wait, so an interrupt restores it too."""
        p = dict(fault.params)
        kind = fault.kind

        def record(undo: Undo) -> None:
            self.applied.append((fault, undo))

        if kind == "stop-endpoints":
            roles = self.endpoint_roles(p)
            if not roles:
                raise FaultFailed(f"stop-endpoints: no endpoint matches {p}")
            record(lambda: self.restart(roles))
            self.kill(roles)
            await self.wait_dead(roles)
        elif kind in ("kill-gateway", "registry-down"):
            role = f"{p['cluster']}/{'gateway' if kind == 'kill-gateway' else 'etcd'}"
            if role not in self.state.processes:
                raise FaultFailed(f"{kind}: {p['cluster']} has no {role.split('/')[1]} in this demo"
                                  + (" (registry-down needs a demo with --backend etcd)" if kind == "registry-down" else ""))
            record(lambda: self.restart([role]))
            self.kill([role])
            await self.wait_dead([role])
        elif kind == "control-restart":
            role = f"{p['cluster']}/control"
            record(lambda: self.restart([role]))
            self.kill([role], signal.SIGTERM)
            await self.wait_dead([role])
            self.restart([role])
        elif kind == "stop-region":
            names = {c["name"] for c in self.state.clusters if c["region"] == p["region"]}
            roles = self.roles(lambda role, info: info.get("cluster") in names)
            # Restore in dependency order: registries, endpoints, control planes, gateways.
            order = {"etcd": 0, "endpoint": 1, "control": 2, "gateway": 3}
            roles.sort(key=lambda r: order.get(r.split("/")[1], 9))
            record(lambda: self.restart(roles))
            self.kill(roles)
            await self.wait_dead(roles)
        elif kind in IPTABLES_FAULTS:
            record(await self.break_link(p["cluster"], p["peer"], nursery, loss_percent=p.get("loss_percent"),
                                         latency_ms=p.get("latency_ms")))
        elif kind == "brownout":
            roles = self.endpoint_roles(p)
            chosen = roles[: max(1, math.ceil(len(roles) * float(p.get("fraction", 0.5))))]
            record(lambda: self.kill(chosen, signal.SIGUSR2))
            self.kill(chosen, signal.SIGUSR1)
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

            def stop_flapping() -> None:
                scope.cancel()
                self.restart(roles)

            record(stop_flapping)
            nursery.start_soon(flap)
        elif kind == "cert-rotation":
            # Nothing to undo: the rotated identity is as good as the old one.
            self._issue_gateway_leaf(p["cluster"], expired=False)
            how = await self.take_up_identity(p["cluster"])
            self.notes.append(f"cert-rotation: {p['cluster']}'s gateway {how} with a new leaf")
        elif kind == "cert-expired":
            cluster = p["cluster"]
            self._issue_gateway_leaf(cluster, expired=True)

            async def fresh_leaf() -> None:
                self._issue_gateway_leaf(cluster, expired=False)
                how = await self.take_up_identity(cluster)
                self.notes.append(f"cert-expired restored: {cluster}'s gateway {how} with a fresh leaf")

            record(fresh_leaf)
            how = await self.take_up_identity(cluster)
            if how == "reloaded":
                # Connections open before the swap keep the valid leaf: cut them so every peer handshakes again.
                _run(["ss", "-K", "-tn", "dst", self._cluster(cluster)["eastwest"]])
            self.notes.append(f"cert-expired: {cluster}'s gateway {how} with an expired leaf")
        else:
            raise FaultFailed(f"{kind}: not supported by this runner yet")

    async def restore(self, fault: Fault) -> None:
        for index, (applied, undo) in enumerate(self.applied):
            if applied is fault:
                del self.applied[index]
                await _call(undo)
                return

    async def restore_all(self) -> None:
        """Undo every fault still applied (newest first), then stop gateways retired by restarts."""
        while self.applied:
            _, undo = self.applied.pop()
            await _call(undo)
        while self.finalizers:
            self.finalizers.pop(0)()
        retiring = [pid for pid in self.retiring if processes.alive(pid)]
        self.retiring.clear()
        if retiring:
            await processes.stop(retiring)


async def _call(undo: Undo) -> None:
    result = undo()
    if inspect.isawaitable(result):
        await result
