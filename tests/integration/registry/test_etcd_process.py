"""`open_etcd`: throwaway etcd clusters start healthy, elect a new leader after a kill,
and leave no process and no port behind; a missing binary says how to install it."""

from __future__ import annotations

import socket

import httpx
import psutil
import pytest

from registry.etcd_process import EtcdNotInstalled, open_etcd
from tests.integration.registry.conftest import needs_etcd


def _port_refuses(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) != 0


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@needs_etcd
async def test_one_member_answers_then_leaves_no_process_or_port(tmp_path):
    async with open_etcd(tmp_path) as cluster:
        (member,) = cluster.members
        pid = member.pid
        assert psutil.Process(pid).name() == "etcd"
        async with httpx.AsyncClient(trust_env=False) as client:
            health = await client.get(f"{cluster.client_urls[0]}/health")
        assert health.json()["health"] == "true"
        assert (await cluster.leader()) is member
        assert cluster.registry_url == "etcd://" + cluster.client_urls[0].removeprefix("http://")
        urls = [member.client_url, member.peer_url]
    assert _gone(pid)
    assert all(_port_refuses(url) for url in urls)
    assert (tmp_path / "etcd-m0").is_dir()


@needs_etcd
async def test_three_members_elect_a_new_leader_after_the_leader_is_killed(tmp_path):
    async with open_etcd(tmp_path, members=3) as cluster:
        pids = [m.pid for m in cluster.members]
        assert len(set(pids)) == 3
        leader = await cluster.leader()
        await leader.kill()
        assert not leader.running and _port_refuses(leader.client_url)
        successor = await cluster.leader()
        assert successor is not leader
        await leader.start()  # rejoins with its data directory
        await cluster.wait_healthy()
        assert leader.running
    assert all(_gone(pid) for pid in pids)


async def test_missing_binary_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EtcdNotInstalled, match="apt-get install etcd-server"):
        async with open_etcd(tmp_path):
            raise AssertionError("etcd started without a binary")


async def test_refuses_to_bind_outside_loopback(tmp_path):
    with pytest.raises(ValueError, match="loopback"):
        async with open_etcd(tmp_path, host="0.0.0.0"):
            raise AssertionError("etcd started on a public address")


@needs_etcd
async def test_a_port_taken_before_etcd_binds_it_makes_it_start_on_other_ports(tmp_path, monkeypatch):
    import registry.etcd_process as etcd_process

    real_free_port = etcd_process._free_port
    calls = []
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]

        def first_client_port_taken(host):
            calls.append(host)
            return taken if len(calls) == 2 else real_free_port(host)  # call 2: m0's client port

        monkeypatch.setattr(etcd_process, "_free_port", first_client_port_taken)
        async with open_etcd(tmp_path) as cluster:
            assert not cluster.client_urls[0].endswith(f":{taken}")
            async with httpx.AsyncClient(trust_env=False) as client:
                assert (await client.get(f"{cluster.client_urls[0]}/health")).json()["health"] == "true"
