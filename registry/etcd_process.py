"""Throwaway etcd clusters on loopback: `open_etcd(tmp_dir, members=1|3)`.

Owns starting Debian's `etcd` binary (3.4, package `etcd-server`) as one or three members
on free 127.0.0.0/8 ports with their data under `tmp_dir`, waiting for the cluster to be
healthy (polling `/health` with a deadline, never a fixed sleep), finding the leader
(`/v3/maintenance/status`), killing, stopping and restarting single members, and stopping
everything on exit. Tests, `isthmus bench registry --backend etcd` and the demo use it.

It imports neither `gateway` nor `federation`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import httpx
import trio

from registry.errors import RegistryError

INSTALL_HINT = "install it with: apt-get install etcd-server"


class EtcdNotInstalled(RegistryError):
    """No `etcd` binary on PATH."""

    def __init__(self) -> None:
        super().__init__(f"the etcd binary is not on PATH; {INSTALL_HINT}")


class EtcdStartFailed(RegistryError):
    """An etcd member did not become healthy in time (the message carries its log's last line)."""


def find_etcd() -> str:
    """Path of the `etcd` binary, or `EtcdNotInstalled`."""
    path = shutil.which("etcd")
    if path is None:
        raise EtcdNotInstalled()
    return path


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


@attrs.define(eq=False)
class EtcdMember:
    """One etcd process: its name, URLs, data directory and (while running) its process."""

    name: str
    client_url: str
    peer_url: str
    data_dir: Path
    log_path: Path
    argv: list[str]
    process: trio.Process | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        """Start (or restart, keeping its data directory) this member; does not wait for health."""
        if self.running:
            return
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self.process = await trio.lowlevel.open_process(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            os.close(log)

    async def kill(self) -> None:
        """SIGKILL, as a crash would: no goodbye to the peers."""
        await self._signal_and_wait(signal.SIGKILL, grace_s=5.0)

    async def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `grace_s`."""
        await self._signal_and_wait(signal.SIGTERM, grace_s=grace_s)

    async def _signal_and_wait(self, signum: int, grace_s: float) -> None:
        process = self.process
        if process is None:
            return
        if process.returncode is None:
            process.send_signal(signum)
            with trio.move_on_after(grace_s) as scope:
                await process.wait()
            if scope.cancelled_caught:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
        self.process = None

    async def wait_healthy(self, client: httpx.AsyncClient, deadline_s: float) -> None:
        """Poll `/health` until it says true, or raise `EtcdStartFailed` after `deadline_s`."""
        reason = "no answer yet"
        with trio.move_on_after(deadline_s):
            while True:
                if self.process is not None and self.process.returncode is not None:
                    raise EtcdStartFailed(
                        f"etcd member {self.name} exited with status {self.process.returncode}: "
                        f"{_last_line(self.log_path)}"
                    )
                try:
                    response = await client.get(f"{self.client_url}/health", timeout=1.0)
                    if response.status_code == 200 and response.json().get("health") == "true":
                        return
                    reason = f"/health said {response.text.strip()[:200]}"
                except (httpx.TransportError, ValueError) as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                await trio.sleep(0.05)
        raise EtcdStartFailed(
            f"etcd member {self.name} at {self.client_url} not healthy after {deadline_s:g}s ({reason}); "
            f"log: {_last_line(self.log_path)}"
        )


@attrs.define(eq=False)
class EtcdCluster:
    """A running throwaway cluster: `client_urls`, `members`, and `leader()`."""

    members: list[EtcdMember]
    client: httpx.AsyncClient

    @property
    def client_urls(self) -> list[str]:
        return [member.client_url for member in self.members]

    @property
    def registry_url(self) -> str:
        """The `etcd://host:port[,host:port]` URL of this cluster, as `--registry` takes it."""
        return "etcd://" + ",".join(url.removeprefix("http://") for url in self.client_urls)

    async def leader(self, deadline_s: float = 10.0) -> EtcdMember:
        """The member that is leader now, asking each running member's `/v3/maintenance/status`."""
        with trio.move_on_after(deadline_s):
            while True:
                for member in self.members:
                    if not member.running:
                        continue
                    try:
                        response = await self.client.post(
                            f"{member.client_url}/v3/maintenance/status", json={}, timeout=1.0
                        )
                        body = response.json()
                    except (httpx.TransportError, ValueError):
                        continue
                    leader_id = body.get("leader")
                    if leader_id and leader_id == body.get("header", {}).get("member_id"):
                        return member
                await trio.sleep(0.05)
        raise EtcdStartFailed(f"no etcd leader among {', '.join(self.client_urls)} after {deadline_s:g}s")

    async def wait_healthy(self, deadline_s: float = 15.0) -> None:
        """Every running member answers `/health` with true (a cluster has a leader)."""
        for member in self.members:
            if member.running:
                await member.wait_healthy(self.client, deadline_s)

    async def stop(self) -> None:
        with trio.CancelScope(shield=True):
            for member in self.members:
                await member.stop()


def _plan(
    binary: str, root: Path, names: list[str], host: str, heartbeat_ms: int, election_ms: int
) -> list[EtcdMember]:
    """The members of a new cluster on fresh free ports, data directories under `root`."""
    token = f"isthmus-{os.getpid()}-{_free_port(host)}"
    ports = {name: (_free_port(host), _free_port(host)) for name in names}
    initial_cluster = ",".join(f"{name}=http://{host}:{ports[name][1]}" for name in names)
    planned = []
    for name in names:
        client_url = f"http://{host}:{ports[name][0]}"
        peer_url = f"http://{host}:{ports[name][1]}"
        data_dir = root / f"etcd-{name}"
        argv = [
            binary,
            "--name", name,
            "--data-dir", str(data_dir),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", token,
            "--heartbeat-interval", str(heartbeat_ms),
            "--election-timeout", str(election_ms),
            "--log-level", "warn",
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]  # fmt: skip
        planned.append(
            EtcdMember(
                name=name,
                client_url=client_url,
                peer_url=peer_url,
                data_dir=data_dir,
                log_path=root / f"etcd-{name}.log",
                argv=argv,
            )
        )
    return planned


def _port_was_taken(planned: list[EtcdMember]) -> bool:
    """Another process bound one of the ports between choosing and binding it."""
    for member in planned:
        try:
            if "address already in use" in member.log_path.read_text(errors="replace"):
                return True
        except OSError:
            continue
    return False


@asynccontextmanager
async def open_etcd(
    tmp_dir: str | os.PathLike[str],
    *,
    members: int = 1,
    host: str = "127.0.0.1",
    heartbeat_ms: int = 100,
    election_ms: int = 1000,
    deadline_s: float = 20.0,
) -> AsyncIterator[EtcdCluster]:
    """Start `members` etcd members (1, 3 or 5) under `tmp_dir`, wait until healthy, stop them on exit.

    `host` must be a loopback address. Raises `EtcdNotInstalled` without the binary and
    `EtcdStartFailed` when the cluster is not healthy within `deadline_s`. A port taken by
    someone else between choosing and binding it makes it start again on other ports.
    """
    if members not in (1, 3, 5):
        raise ValueError(f"members must be 1, 3 or 5, not {members}")
    if not host.startswith("127."):
        raise ValueError(f"etcd for tests binds loopback only, not {host}")
    binary = find_etcd()
    root = Path(tmp_dir)
    root.mkdir(parents=True, exist_ok=True)
    names = [f"m{i}" for i in range(members)]
    async with httpx.AsyncClient(trust_env=False) as client:
        for attempt in range(3):
            cluster = EtcdCluster(
                members=_plan(binary, root, names, host, heartbeat_ms, election_ms), client=client
            )
            try:
                for member in cluster.members:
                    await member.start()
                await cluster.wait_healthy(deadline_s)
            except EtcdStartFailed:
                await cluster.stop()
                if attempt == 2 or not _port_was_taken(cluster.members):
                    raise
                for member in cluster.members:
                    shutil.rmtree(member.data_dir, ignore_errors=True)
                    member.log_path.unlink(missing_ok=True)
                continue
            except BaseException:
                await cluster.stop()
                raise
            break
        try:
            yield cluster
        finally:
            await cluster.stop()
