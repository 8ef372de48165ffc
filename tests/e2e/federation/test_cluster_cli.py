"""`isthmus control`, `isthmus gateway` and `isthmus cluster ...` as an operator runs them: two clusters,
a control plane and a gateway each (federation crosses between the gateways)."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio

from certs.testing import make_pki
from federation.commands._export import add_export_verb
from registry.model import Endpoint, Locality, Service
from registry.store import Store
from registry.url import open_backend
from tests.conftest import free_port

CLUSTERS = {"east-1": ("us-east", "us-east-1a"), "west-1": ("eu-west", "eu-west-1a")}
HOSTS = {"east-1": "127.0.1.1", "west-1": "127.0.2.1"}


def isthmus(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "federation.cli", *args], capture_output=True, text=True, timeout=60)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def write_config(tmp_path: Path, name: str) -> Path:
    host = HOSTS[name]
    region, zone = CLUSTERS[name]
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f"""trust_domain = "mesh.example"
[cluster]
name = "{name}"
region = "{region}"
zones = ["{zone}"]
data_dir = "data/{name}"
[pki]
dir = "pki"
[gateway]
eastwest = "{host}:{free_port(host)}"
outbound = "{host}:{free_port(host)}"
admin = "{host}:{free_port(host)}"
[control]
api = "{host}:{free_port(host)}"
federation = "{host}:{free_port(host)}"
"""
    )
    return path


def api_of(config: Path, key: str = "api") -> str:
    for line in config.read_text().splitlines():
        if line.startswith(f"{key} = "):
            return line.split('"')[1]
    raise AssertionError(f"no {key} in config")


def start_gateway(config: Path) -> subprocess.Popen[str]:
    """`isthmus gateway --config F`, once its admin listener answers /ready (its catalog is in force)."""
    proc = subprocess.Popen([sys.executable, "-m", "federation.cli", "gateway", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the gateway exited"
        try:
            if httpx.get(f"http://{api_of(config, 'admin')}/ready", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("gateway did not start")


def start_control(config: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "federation.cli", "control", "--config", str(config), "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            if httpx.get(f"http://{api_of(config)}/v1/status", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("control plane did not start")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def register_service(tmp_path: Path, cluster: str, service: str, addresses: list[str]) -> None:
    region, zone = CLUSTERS[cluster]

    async def main() -> None:
        async with open_backend(f"sqlite:///{tmp_path / 'data' / cluster / 'registry.db'}") as backend:
            await Store(backend).register_endpoints(
                Service.from_key(service), [Endpoint(service, cluster, a, 8080, Locality(region, zone)) for a in addresses]
            )

    trio.run(main)


def export(config: Path, service: str, to: str) -> None:
    parser = argparse.ArgumentParser()
    add_export_verb(parser.add_subparsers())
    args = parser.parse_args(["export", service, "--to", to, "--config", str(config)])
    assert args.run(args) == 0


def wait_for_list(config: Path, predicate, within_s: float = 20) -> list[dict]:
    """Poll the API until `predicate(peers)`, then answer what `isthmus cluster list --json` prints."""
    deadline = time.monotonic() + within_s
    while not predicate(httpx.get(f"http://{api_of(config)}/v1/peers", timeout=5).json()["peers"]):
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return json.loads(isthmus("cluster", "list", "--json", "--config", str(config), check=True).stdout)


@pytest.mark.slow
def test_two_clusters_peer_with_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_pki(tmp_path / "pki", clusters=CLUSTERS)
    east, west = write_config(tmp_path, "east-1"), write_config(tmp_path, "west-1")
    procs = [start_control(east), start_control(west)]
    try:
        procs += [start_gateway(east), start_gateway(west)]
        register_service(tmp_path, "east-1", "echo.demo", ["127.0.1.10", "127.0.1.11"])
        export(east, "echo.demo", "west-1")

        bad = one_line_error(isthmus("cluster", "register", "--token", "not-a-token", "--config", str(west)))
        assert bad.startswith("isthmus: error: peering token rejected (malformed): ")

        other = isthmus("cluster", "token", "--for", "east-2", "--config", str(east), check=True).stdout.strip()
        bad = one_line_error(isthmus("cluster", "register", "--token", other, "--config", str(west)))
        assert "(wrong-cluster)" in bad and "'east-2'" in bad

        token = isthmus("cluster", "token", "--for", "west-1", "--ttl", "10m", "--config", str(east), check=True).stdout.strip()
        linked = isthmus("cluster", "register", "--token", token, "--config", str(west), check=True).stdout
        assert "west-1 is now linked with east-1 (us-east/us-east-1a)" in linked
        assert "trusted root (SHA-256): " in linked

        peers = wait_for_list(west, lambda ps: ps and ps[0]["state"] == "synced" and ps[0]["imported_endpoints"] == 2)
        assert peers[0]["name"] == "east-1" and peers[0]["imported_endpoints"] == 2
        east_peers = wait_for_list(east, lambda ps: ps and ps[0]["state"] == "synced")
        assert east_peers[0]["name"] == "west-1"

        table = isthmus("cluster", "list", "--config", str(west), check=True).stdout
        assert "east-1" in table and "synced" in table
        # The probe went through east-1's gateway, and the list shows what /metrics shows.
        peers = wait_for_list(west, lambda ps: ps[0]["probe"] == "up")
        assert peers[0]["rtt_ms"] > 0 and peers[0]["peer_identity"] == "spiffe://mesh.example/cluster/east-1/gateway"
        metrics = httpx.get(f"http://{api_of(west)}/metrics", timeout=5).text
        assert 'isthmus_peer_probe_up{destination_cluster="east-1",source_cluster="west-1"} 1.0' in metrics

        check = isthmus("cluster", "check", "--config", str(west))
        assert check.returncode == 0, check.stdout + check.stderr
        for name in ("reachability", "certificates", "clock-skew", "trust", "exports", "probe", "sync"):
            assert name in check.stdout
        assert "all links healthy" in check.stdout

        catalog = httpx.get(f"http://{api_of(west)}/v1/catalog", timeout=5).json()["catalog"]
        imported = [e for e in catalog["endpoints"] if e["service"] == "echo.demo"]
        assert {(e["cluster"], e["locality"]) for e in imported} == {("east-1", "us-east/us-east-1a")} and len(imported) == 2

        # Unlinking drops the imports; the same token again is refused by the issuer as spent.
        isthmus("cluster", "remove", "east-1", "--config", str(west), check=True)
        deadline = time.monotonic() + 10
        while httpx.get(f"http://{api_of(west)}/v1/catalog", timeout=5).json()["catalog"]["endpoints"]:
            assert time.monotonic() < deadline, "imports of a removed peer are still served"
            time.sleep(0.1)
        replay = one_line_error(isthmus("cluster", "register", "--token", token, "--config", str(west)))
        assert "(replayed)" in replay and "single use" in replay

        unknown = one_line_error(isthmus("cluster", "remove", "north-9", "--config", str(west)))
        assert unknown == "isthmus: error: cluster 'north-9' is not a peer of west-1 (peers: none)"
    finally:
        for proc in procs:
            stop(proc)
    down = one_line_error(isthmus("cluster", "list", "--config", str(west)))
    assert "is not reachable" in down and "isthmus control --config" in down


def test_control_with_a_bad_config_is_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[cluster]\nname = "East_1"\nzones = ["a"]\n')
    line = one_line_error(isthmus("control", "--config", str(bad)))
    assert line.startswith(f"isthmus: error: {bad}: cluster.name: 'East_1' is not a DNS-1123 label")


def test_control_without_certificates_is_one_line(tmp_path):
    config = write_config(tmp_path, "east-1")
    line = one_line_error(isthmus("control", "--config", str(config)))
    assert "isthmus: error:" in line and "pki" in line


def test_token_without_a_cluster_ca_is_one_line(tmp_path):
    config = write_config(tmp_path, "east-1")
    line = one_line_error(isthmus("cluster", "token", "--for", "west-1", "--config", str(config)))
    assert line == f"isthmus: error: {tmp_path}/pki/clusters/east-1/ca.crt: missing (create the cluster CA with `isthmus certs`)"


@pytest.mark.parametrize(("ttl", "message"), [("soon", "--ttl: 'soon' is not a duration"), ("9d", "--ttl: '9d' is out of range")])
def test_bad_ttl_is_one_line(tmp_path, ttl, message):
    config = write_config(tmp_path, "east-1")
    line = one_line_error(isthmus("cluster", "token", "--for", "west-1", "--ttl", ttl, "--config", str(config)))
    assert message in line
