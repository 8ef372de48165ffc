"""Bring the local multi-cluster demo up, report on it, and take it down.

`demo up` is a list of steps, each idempotent and shown as progress: PKI, configs, registrations and
exports, sample services, control planes, peering by tokens, gateways, Prometheus (when installed), and a
first cross-region request. A failure part-way stops everything this run started (nothing is left
half-running) and says which step failed. The demo's state lives in `<dir>/demo.json`: every process by
role with its argv (so drills can kill and restore any of them) and the clusters' addresses; `demo status
--json` prints it in the documented shape, a second `demo up` sees the running demo, and `demo down`
knows every pid to stop. `--clusters A,B --bare` brings up single clusters without peering or exports
(the Terraform provider composes those from resources).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import tomli_w
import trio

from federation.demo import processes
from federation.demo.topology import PROMETHEUS_ADDRESS, TRUST_DOMAIN, ClusterPlan, plan
from federation.errors import FederationError
from registry.errors import RegistryUnavailable

STATE_FILE = "demo.json"


class DemoError(FederationError):
    """The demo cannot be brought up or down; the message says which step and why."""


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@attrs.define
class DemoState:
    """What is running where. Saved as `<dir>/demo.json`; `to_json()` is `demo status --json`."""

    dir: str
    backend: str
    dashboard: str = ""
    prometheus: str = ""
    clusters: list[dict[str, Any]] = attrs.field(factory=list)
    # role ("east-1/gateway", "east-1/control", "east-1/endpoint/echo.demo/us-east-1a", "prometheus", ...)
    # -> {"pid", "argv", "cluster", and for endpoints "service", "zone", "address", "protocol"}.
    processes: dict[str, dict[str, Any]] = attrs.field(factory=dict)

    def all_pids(self) -> list[int]:
        return [p["pid"] for p in self.processes.values()]

    def pids_of(self, prefix: str) -> list[int]:
        return [p["pid"] for role, p in self.processes.items() if role.startswith(prefix)]

    def cluster(self, name: str) -> dict[str, Any] | None:
        return next((c for c in self.clusters if c["name"] == name), None)

    def to_json(self) -> dict[str, Any]:
        """The scripting interface: `{"dir", "dashboard", "prometheus", "clusters", "endpoints"}`."""
        clusters = []
        for c in self.clusters:
            pids = [p["pid"] for role, p in self.processes.items()
                    if p.get("cluster") == c["name"] and "/endpoint/" not in role]
            clusters.append({**{k: v for k, v in c.items() if k != "pids"}, "pids": pids})
        endpoints = [
            {"service": p["service"], "cluster": p["cluster"], "zone": p["zone"], "address": p["address"], "pid": p["pid"]}
            for role, p in self.processes.items() if "/endpoint/" in role
        ]
        return {"dir": self.dir, "backend": self.backend, "dashboard": self.dashboard, "prometheus": self.prometheus,
                "clusters": clusters, "endpoints": endpoints}

    def save(self) -> None:
        path = Path(self.dir) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(attrs.asdict(self), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, directory: Path) -> DemoState | None:
        path = directory / STATE_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise DemoError(f"{path}: unreadable demo state: {exc}") from None
        return cls(**{f.name: raw[f.name] for f in attrs.fields(cls) if f.name in raw})


def cluster_config(p: ClusterPlan, registry_url: str) -> dict[str, Any]:
    """The cluster TOML for one demo cluster (as a mapping)."""
    return {
        "trust_domain": TRUST_DOMAIN,
        "cluster": {"name": p.name, "region": p.region, "zones": list(p.zones), "data_dir": f"data/{p.name}"},
        "pki": {"dir": "pki"},
        "registry": {"url": registry_url},
        "gateway": {"eastwest": p.address(p.eastwest), "outbound": p.address(p.outbound), "admin": p.address(p.admin)},
        "control": {"api": p.address(p.control), "federation": p.address(p.federation)},
    }


def endpoint_role(cluster: str, service: str, zone: str) -> str:
    return f"{cluster}/endpoint/{service}/{zone}"


# Services every demo cluster exports to all its peers.
EXPORTED = ("echo.demo", "hello.demo", "greeter.demo")
STARTUP_DEADLINE_S = 30.0


class Demo:
    """One demo directory and the steps that act on it."""

    def __init__(self, directory: Path, backend: str = "sqlite") -> None:
        self.dir = directory.resolve()
        self.backend = backend
        self.logs = self.dir / "logs"

    def running(self) -> DemoState | None:
        state = DemoState.load(self.dir)
        if state is None or not any(processes.alive(pid) for pid in state.all_pids()):
            return None
        return state

    # -- steps ---------------------------------------------------------------------------------------

    def make_pki(self, plans: Sequence[ClusterPlan]) -> Path:
        from certs import pki

        pki_dir = self.dir / "pki"
        if not (pki_dir / "root" / "ca.crt").exists():
            pki.init_root(pki_dir, TRUST_DOMAIN)
        for p in plans:
            if not (pki_dir / "clusters" / p.name / "ca.crt").exists():
                pki.create_cluster_ca(pki_dir, p.name, region=p.region, zone=p.zones[0])
            for name in ("gateway", "control"):
                if not (pki_dir / "clusters" / p.name / "identities" / name / "cert.pem").exists():
                    pki.issue_identity(pki_dir, p.name, name, dns_names=("localhost",))
        return pki_dir

    def registry_url(self, p: ClusterPlan, state: DemoState) -> str:
        if self.backend == "etcd":
            return f"etcd://{state.processes[f'{p.name}/etcd']['address']}"
        return f"sqlite:///{self.dir / 'data' / p.name / 'registry.db'}"

    def write_config(self, p: ClusterPlan, state: DemoState) -> Path:
        from federation.config import ClusterConfig

        (self.dir / "data" / p.name).mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{p.name}.toml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(tomli_w.dumps(cluster_config(p, self.registry_url(p, state))))
        tmp.replace(path)
        ClusterConfig.from_toml(path)  # what we wrote must load
        return path

    def start(self, state: DemoState, role: str, argv: list[str], cluster: str | None = None, **info: Any) -> int:
        """Start (or restart) the process playing `role`, recording it in `state`."""
        pid = processes.spawn(role.replace("/", "-"), argv, self.logs)
        state.processes[role] = {"pid": pid, "argv": argv, "cluster": cluster, **info}
        state.save()
        return pid

    async def start_etcd(self, p: ClusterPlan, state: DemoState) -> None:
        import shutil

        if shutil.which("etcd") is None:
            raise DemoError("--backend etcd needs the etcd binary: apt-get install etcd-server")
        client = f"{p.host}:{pick_free_port(p.host, 12379)}"
        peer = f"{p.host}:{pick_free_port(p.host, 12380)}"
        data = self.dir / "data" / p.name / "etcd"
        argv = ["etcd", "--name", p.name, "--data-dir", str(data),
                "--listen-client-urls", f"http://{client}", "--advertise-client-urls", f"http://{client}",
                "--listen-peer-urls", f"http://{peer}", "--initial-advertise-peer-urls", f"http://{peer}",
                "--initial-cluster", f"{p.name}=http://{peer}", "--initial-cluster-state", "new"]
        pid = self.start(state, f"{p.name}/etcd", argv, p.name, address=client)
        await wait_listening(client, STARTUP_DEADLINE_S, pid)

    async def register(self, p: ClusterPlan, config_path: Path, *, export: bool) -> None:
        """Declare the cluster, register its sample endpoints (and export them) in its registry."""
        from federation.config import ClusterConfig
        from registry.errors import DuplicateEndpoint
        from registry.model import Cluster, Endpoint, Export, Locality, Service
        from registry.store import Store
        from registry.url import open_backend

        config = ClusterConfig.from_toml(config_path)
        deadline = trio.current_time() + STARTUP_DEADLINE_S
        while True:  # a freshly started etcd may refuse its first writes for a moment
            try:
                async with open_backend(config.registry_url) as backend:
                    store = Store(backend)
                    await store.add_cluster(Cluster(p.name, p.region, p.zones))
                    by_service: dict[str, list[Endpoint]] = {}
                    protocols = {}
                    for ep in p.endpoints:
                        protocols[ep.service] = ep.protocol
                        by_service.setdefault(ep.service, []).append(
                            Endpoint(service=ep.service, cluster=p.name, address=ep.host, port=ep.port,
                                     locality=Locality(p.region, ep.zone)))
                    for service, endpoints in by_service.items():
                        svc = Service.from_key(service, protocol="http2" if protocols[service] == "grpc" else "http",
                                               ports=(endpoints[0].port,))
                        try:
                            await store.register_endpoints(svc, endpoints, replace=True)
                        except DuplicateEndpoint:
                            pass
                        if export and service in EXPORTED:
                            await store.set_export(p.name, Export(service, ("*",)))
                return
            except RegistryUnavailable:
                if trio.current_time() > deadline:
                    raise
                await trio.sleep(0.2)

    def start_endpoints(self, p: ClusterPlan, state: DemoState) -> list[int]:
        pids = []
        for ep in p.endpoints:
            argv = processes.isthmus_argv(
                "demo", "serve", ep.service, "--cluster", p.name, "--zone", ep.zone,
                "--listen", f"{ep.host}:{ep.port}", "--protocol", ep.protocol,
            )
            pids.append(self.start(state, endpoint_role(p.name, ep.service, ep.zone), argv, p.name,
                                   service=ep.service, zone=ep.zone, address=f"{ep.host}:{ep.port}", protocol=ep.protocol))
        return pids

    async def peer(self, a: Path, b: Path) -> None:
        """Link clusters a and b: a token from a, redeemed on b (mutual: both import from each other)."""
        from federation.commands._client import call
        from federation.config import ClusterConfig
        from federation.control import issue_peering_token

        config_a, config_b = ClusterConfig.from_toml(a), ClusterConfig.from_toml(b)
        peers_of_b = await trio.to_thread.run_sync(lambda: call(config_b, "GET", "/v1/peers"))
        names = {peer.get("name") for peer in (peers_of_b.get("peers", peers_of_b) if isinstance(peers_of_b, dict) else peers_of_b)}
        if config_a.cluster.name in names:
            return
        text, _ = issue_peering_token(config_a, config_b.cluster.name, 600)
        await trio.to_thread.run_sync(lambda: call(config_b, "POST", "/v1/peering/register", json={"token": text}))

    async def start_prometheus(self, plans: Sequence[ClusterPlan], state: DemoState) -> None:
        import shutil

        from federation.dashboard.promconfig import prometheus_argv, render_scrape_config

        if shutil.which("prometheus") is None:
            return
        host, default_port = PROMETHEUS_ADDRESS
        address = f"{host}:{pick_free_port(host, default_port)}"
        config = self.dir / "prometheus.yml"
        config.write_text(render_scrape_config([p.address(p.admin) for p in plans], [p.address(p.control) for p in plans],
                                               scrape_interval="5s"))
        argv = prometheus_argv(config, self.dir / "data" / "prometheus", address)
        pid = self.start(state, "prometheus", argv, None, address=address)
        await wait_listening(address, STARTUP_DEADLINE_S, pid)
        state.prometheus = f"http://{address}"


def pick_free_port(host: str, port: int) -> int:
    while not port_is_free(host, port):
        port += 1
    return port


async def wait_listening(address: str, deadline_s: float, pid: int | None = None) -> None:
    """Poll until `host:port` accepts a TCP connection (or its process died, or the deadline passed)."""
    host, _, port = address.rpartition(":")
    with trio.move_on_after(deadline_s):
        while True:
            if pid is not None and not processes.alive(pid):
                raise DemoError(f"the process for {address} exited; see its log under logs/")
            try:
                stream = await trio.open_tcp_stream(host, int(port))
            except OSError:
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            return
    raise DemoError(f"nothing listens on {address} after {deadline_s:.0f} s")


async def wait_crossing(outbound: str, service: str, expect_cluster: str, deadline_s: float) -> float:
    """Poll `service` through a cluster's outbound listener until `expect_cluster` answers; returns when."""
    import httpx

    started = trio.current_time()
    last = "no answer"
    async with httpx.AsyncClient(timeout=2.0) as client:
        with trio.move_on_after(deadline_s):
            while True:
                try:
                    response = await client.get(f"http://{outbound}/", headers={"host": service})
                    served = response.headers.get("x-isthmus-cluster", "")
                    if response.status_code == 200 and served == expect_cluster:
                        return trio.current_time() - started
                    last = f"{response.status_code} {response.headers.get('x-isthmus-reason', '')} from {served or '?'}"
                except httpx.HTTPError as exc:
                    last = type(exc).__name__
                await trio.sleep(0.1)
    raise DemoError(f"no request to {service} through {outbound} reached {expect_cluster} in {deadline_s:.0f} s (last: {last})")


async def demo_down(directory: Path, clusters: Sequence[str] = ()) -> tuple[int, list[int]]:
    """Stop the demo in `directory` (only `clusters` if given); returns (stopped, killed)."""
    directory = directory.resolve()
    state = DemoState.load(directory)
    if state is None:
        return 0, []
    if clusters:
        roles = [r for r, p in state.processes.items() if p.get("cluster") in clusters]
    else:
        roles = list(state.processes)
    pids = [state.processes[r]["pid"] for r in roles if processes.alive(state.processes[r]["pid"])]
    killed = await processes.stop(pids)
    if not clusters or not any(p.get("cluster") not in clusters for p in state.processes.values()):
        (directory / STATE_FILE).unlink(missing_ok=True)
    else:
        for r in roles:
            del state.processes[r]
        state.clusters = [c for c in state.clusters if c["name"] not in clusters]
        state.save()
    return len(pids), killed


async def demo_up(directory: Path, backend: str = "sqlite", clusters: Sequence[str] = (), bare: bool = False) -> DemoState:
    """Bring the demo (or only `clusters`) up in `directory`, or report what already runs there."""
    from rich.console import Console

    console = Console(stderr=True)
    demo = Demo(directory, backend)
    state = DemoState.load(demo.dir)
    if state is not None and not any(processes.alive(pid) for pid in state.all_pids()):
        state = None  # a stale state file from a demo that is gone
    wanted = [p for p in plan(is_free=port_is_free) if not clusters or p.name in clusters]
    unknown = set(clusters) - {p.name for p in plan()}
    if unknown:
        raise DemoError(f"--clusters: {', '.join(sorted(unknown))} not in the demo topology (east-1, east-2, west-1)")
    if state is not None:
        todo = [p for p in wanted if state.cluster(p.name) is None]
        if not todo:
            console.print(f"[yellow]the demo is already running in {demo.dir}[/yellow] "
                          f"(`isthmus demo down --dir {directory}` stops it)")
            return state
        wanted = todo
    else:
        demo.dir.mkdir(parents=True, exist_ok=True)
        state = DemoState(dir=str(demo.dir), backend=backend)
    before = set(state.processes)
    started_at = trio.current_time()
    try:
        with console.status("starting the demo") as status:

            def step(text: str) -> None:
                status.update(text)
                console.log(text)

            step(f"PKI for {TRUST_DOMAIN}: a root CA, one intermediate per cluster, gateway and control identities")
            pki_dir = demo.make_pki(wanted)
            configs: dict[str, Path] = {}
            for p in wanted:
                if backend == "etcd":
                    step(f"{p.name}: its own etcd")
                    await demo.start_etcd(p, state)
                configs[p.name] = demo.write_config(p, state)
                step(f"{p.name}: registering sample services" + ("" if bare else " and exporting them to every peer"))
                await demo.register(p, configs[p.name], export=not bare)
                demo.start_endpoints(p, state)
                control_pid = demo.start(state, f"{p.name}/control",
                                         processes.isthmus_argv("control", "--config", str(configs[p.name])), p.name)
                state.clusters.append({
                    "name": p.name, "region": p.region, "zones": list(p.zones), "config": str(configs[p.name]),
                    "pki_dir": str(pki_dir), "outbound": p.address(p.outbound), "eastwest": p.address(p.eastwest),
                    "admin": p.address(p.admin), "control": p.address(p.control),
                })
                state.save()
                step(f"{p.name}: control plane on {p.address(p.control)}")
                await wait_listening(p.address(p.control), STARTUP_DEADLINE_S, control_pid)
            for role, info in state.processes.items():
                if "/endpoint/" in role and role not in before:
                    await wait_listening(info["address"], STARTUP_DEADLINE_S, info["pid"])
            # Gateways before peering: imports between control planes cross through them.
            for p in wanted:
                step(f"{p.name}: gateway (east-west {p.address(p.eastwest)}, outbound {p.address(p.outbound)})")
                pid = demo.start(state, f"{p.name}/gateway",
                                 processes.isthmus_argv("gateway", "--config", str(configs[p.name])), p.name)
                await wait_listening(p.address(p.outbound), STARTUP_DEADLINE_S, pid)
            if not bare:
                everyone = [Path(c["config"]) for c in state.clusters]
                for i, a in enumerate(everyone):
                    for b in everyone[i + 1:]:
                        step(f"peering {a.stem} and {b.stem} with a single-use token")
                        await demo.peer(a, b)
            first = state.cluster("east-1")
            if first is not None:
                state.dashboard = f"http://{first['control']}/dashboard/"
            if not bare and "prometheus" not in state.processes:
                step("Prometheus scraping every gateway and control plane")
                await demo.start_prometheus([p for p in plan() if state.cluster(p.name)], state)
            state.save()
            if not bare and first is not None and state.cluster("west-1") is not None:
                step("a first request from east-1 to hello.demo, which runs only in west-1")
                await wait_crossing(first["outbound"], "hello.demo", "west-1", STARTUP_DEADLINE_S)
                console.log(f"first cross-region request answered {trio.current_time() - started_at:.1f} s after start")
    except BaseException:
        started = [info["pid"] for role, info in state.processes.items() if role not in before]
        await processes.stop([pid for pid in started if processes.alive(pid)])
        for role in set(state.processes) - before:
            del state.processes[role]
        state.clusters = [c for c in state.clusters if any(p.get("cluster") == c["name"] for p in state.processes.values())]
        if state.processes:
            state.save()
        else:
            (demo.dir / STATE_FILE).unlink(missing_ok=True)
        raise
    return state
