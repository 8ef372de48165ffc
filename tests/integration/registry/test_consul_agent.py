"""The registry conformance suite against a real Consul agent, when a `consul` binary is on PATH.

Starts `consul agent -dev` on free loopback ports with its files under tmp_path, waits for
a leader (polling with a deadline), and stops it at the end. Skipped otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from registry.consul import ConsulBackend
from registry.testing import check_backend
from tests.conftest import free_port

pytestmark = pytest.mark.skipif(shutil.which("consul") is None, reason="no consul binary on PATH")


@contextlib.asynccontextmanager
async def open_consul_agent(tmp_path, deadline_s: float = 30.0) -> AsyncIterator[str]:
    """A dev-mode agent on 127.0.0.1; yields its HTTP `host:port`."""
    http_port = free_port()
    config = {
        "ports": {
            "http": http_port,
            "dns": -1,
            "grpc": -1,
            "grpc_tls": -1,
            "serf_lan": free_port(),
            "serf_wan": free_port(),
            "server": free_port(),
        },
    }
    (tmp_path / "consul.json").write_text(json.dumps(config))
    argv = [
        shutil.which("consul"),
        "agent",
        "-dev",
        "-bind",
        "127.0.0.1",
        "-client",
        "127.0.0.1",
        "-advertise",
        "127.0.0.1",
        "-node",
        "isthmus-test",
        "-config-file",
        str(tmp_path / "consul.json"),
    ]
    address = f"127.0.0.1:{http_port}"
    log = os.open(tmp_path / "consul.log", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        process = await trio.lowlevel.open_process(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    finally:
        os.close(log)
    try:
        async with httpx.AsyncClient(trust_env=False) as client:
            with trio.fail_after(deadline_s):
                while True:
                    assert process.returncode is None, (tmp_path / "consul.log").read_text()[-2000:]
                    with contextlib.suppress(httpx.TransportError, ValueError):
                        if (await client.get(f"http://{address}/v1/status/leader")).json():
                            break
                    await trio.sleep(0.1)
        yield address
    finally:
        with trio.CancelScope(shield=True):
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(10) as scope:
                await process.wait()
            if scope.cancelled_caught:
                process.kill()
                await process.wait()


async def test_consul_agent_conforms(tmp_path):
    async with open_consul_agent(tmp_path) as address:

        @contextlib.asynccontextmanager
        async def make_backend() -> AsyncIterator[ConsulBackend]:
            async with httpx.AsyncClient(trust_env=False) as client:
                # A fresh, empty KV store for every check.
                await client.delete(f"http://{address}/v1/kv/", params={"recurse": ""})
            backend = ConsulBackend(address)
            try:
                yield backend
            finally:
                await backend.aclose()

        await check_backend(
            make_backend,
            can_compact=False,  # Consul keeps no history to compact
            consecutive_revisions=False,  # raft indexes jump (sessions use them too)
            lease_ttl_s=10.0,  # Consul's minimum session TTL
            lease_deadline_s=30.0,  # sessions may end up to 2 × TTL late
        )
