"""Bring the local multi-cluster demo up, report on it, and take it down.

`demo up` is a list of steps, each idempotent and shown as progress: PKI, configs, sample services,
control planes, registrations and exports, peering, gateways, Prometheus, and a first cross-region
request. A failure part-way stops everything already started (nothing is left half-running) and says
which step failed. The demo's state lives in `<dir>/demo.json` in the shape `demo status --json` prints,
so a second `demo up` sees the running demo and `demo down` knows every pid to stop.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import tomli_w

from federation.demo import processes
from federation.demo.topology import TRUST_DOMAIN, ClusterPlan, plan
from federation.errors import FederationError

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
    """What is running where; serialised as `demo status --json`."""

    dir: str
    backend: str
    dashboard: str = ""
    prometheus: str = ""
    clusters: list[dict[str, Any]] = attrs.field(factory=list)
    endpoints: list[dict[str, Any]] = attrs.field(factory=list)
    extra_pids: list[int] = attrs.field(factory=list)  # e.g. Prometheus, etcd

    def all_pids(self) -> list[int]:
        pids = [pid for c in self.clusters for pid in c.get("pids", [])]
        pids += [e["pid"] for e in self.endpoints if e.get("pid")]
        return pids + list(self.extra_pids)

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    def save(self) -> None:
        path = Path(self.dir) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
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


def cluster_config(p: ClusterPlan, directory: Path, registry_url: str) -> dict[str, Any]:
    """The cluster TOML for one demo cluster (as a mapping)."""
    return {
        "trust_domain": TRUST_DOMAIN,
        "cluster": {"name": p.name, "region": p.region, "zones": list(p.zones), "data_dir": f"data/{p.name}"},
        "pki": {"dir": "pki"},
        "registry": {"url": registry_url},
        "gateway": {"eastwest": p.address(p.eastwest), "outbound": p.address(p.outbound), "admin": p.address(p.admin)},
        "control": {"api": p.address(p.control)},
    }


Progress = Callable[[str], None]


class Demo:
    """One demo directory and the steps that act on it."""

    def __init__(self, directory: Path, backend: str = "sqlite", progress: Progress = lambda _msg: None) -> None:
        self.dir = directory.resolve()
        self.backend = backend
        self.progress = progress
        self.logs = self.dir / "logs"

    # -- state ---------------------------------------------------------------------------------------

    def running(self) -> DemoState | None:
        state = DemoState.load(self.dir)
        if state is None or not any(processes.alive(pid) for pid in state.all_pids()):
            return None
        return state

    # -- steps ---------------------------------------------------------------------------------------

    def make_pki(self, plans: tuple[ClusterPlan, ...]) -> Path:
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

    def write_configs(self, plans: tuple[ClusterPlan, ...]) -> dict[str, Path]:
        paths = {}
        for p in plans:
            path = self.dir / f"{p.name}.toml"
            registry_url = f"sqlite:///{self.dir / 'data' / p.name / 'registry.db'}"
            (self.dir / "data" / p.name).mkdir(parents=True, exist_ok=True)
            path.write_text(tomli_w.dumps(cluster_config(p, self.dir, registry_url)))
            paths[p.name] = path
        return paths

    def start_endpoints(self, plans: tuple[ClusterPlan, ...]) -> list[dict[str, Any]]:
        started = []
        for p in plans:
            for ep in p.endpoints:
                name = f"{p.name}-{ep.service.split('.')[0]}-{ep.zone}"
                pid = processes.spawn(
                    name,
                    processes.isthmus_argv(
                        "demo", "serve", ep.service, "--cluster", p.name, "--zone", ep.zone,
                        "--listen", f"{ep.host}:{ep.port}", "--protocol", ep.protocol,
                    ),
                    self.logs,
                )
                started.append(
                    {"service": ep.service, "cluster": p.name, "zone": ep.zone, "address": f"{ep.host}:{ep.port}",
                     "protocol": ep.protocol, "pid": pid}
                )
        return started


async def wait_listening(address: str, deadline_s: float, pid: int | None = None) -> None:
    """Poll until `host:port` accepts a TCP connection (or its process died, or the deadline passed)."""
    import trio

    host, _, port = address.rpartition(":")
    with trio.move_on_after(deadline_s):
        while True:
            if pid is not None and not processes.alive(pid):
                raise DemoError(f"the process for {address} exited; see its log")
            try:
                stream = await trio.open_tcp_stream(host, int(port))
            except OSError:
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            return
    raise DemoError(f"nothing listens on {address} after {deadline_s:.0f} s")


async def demo_down(directory: Path) -> tuple[int, list[int]]:
    """Stop every process of the demo in `directory`; returns (stopped, killed)."""
    state = DemoState.load(directory.resolve())
    if state is None:
        return 0, []
    pids = [pid for pid in state.all_pids() if processes.alive(pid)]
    killed = await processes.stop(pids)
    (directory.resolve() / STATE_FILE).unlink(missing_ok=True)
    return len(pids), killed


async def demo_up(directory: Path, backend: str = "sqlite") -> DemoState:
    """Bring the demo up in `directory`, or report the one already running there."""
    from rich.console import Console

    console = Console(stderr=True)
    demo = Demo(directory, backend)
    running = demo.running()
    if running is not None:
        console.print(f"[yellow]a demo is already running in {demo.dir}[/yellow] (`isthmus demo down --dir {directory}` stops it)")
        return running
    demo.dir.mkdir(parents=True, exist_ok=True)
    plans = plan(is_free=port_is_free)
    state = DemoState(dir=str(demo.dir), backend=backend)
    try:
        with console.status("starting the demo") as status:

            def step(text: str) -> None:
                status.update(text)
                console.log(text)

            step("PKI: root CA for mesh.example, one intermediate per cluster, gateway and control identities")
            pki_dir = demo.make_pki(plans)
            step("cluster configs")
            configs = demo.write_configs(plans)
            step("sample services: echo.demo in every zone, hello.demo in west-1, greeter.demo (gRPC)")
            state.endpoints = demo.start_endpoints(plans)
            state.clusters = [
                {
                    "name": p.name, "region": p.region, "zones": list(p.zones), "config": str(configs[p.name]),
                    "pki_dir": str(pki_dir), "outbound": p.address(p.outbound), "eastwest": p.address(p.eastwest),
                    "admin": p.address(p.admin), "control": p.address(p.control), "pids": [],
                }
                for p in plans
            ]
            state.save()
            for ep in state.endpoints:
                await wait_listening(ep["address"], 20, ep["pid"])
    except BaseException:
        await processes.stop([pid for pid in state.all_pids() if processes.alive(pid)])
        (demo.dir / STATE_FILE).unlink(missing_ok=True)
        raise
    return state
