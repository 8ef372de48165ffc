"""The same CLI verbs against a real, throwaway etcd: `--registry etcd://...` selects the backend."""

from __future__ import annotations

import json
import shutil

import pytest
import trio

from registry.etcd_process import open_etcd
from tests.e2e.registry.test_cli_registry import isthmus, one_line_error

pytestmark = [
    pytest.mark.etcd,
    pytest.mark.skipif(shutil.which("etcd") is None, reason="the etcd binary is not on PATH (apt-get install etcd-server)"),
]


async def run(cwd, *args):
    return await trio.to_thread.run_sync(lambda: isthmus(cwd, *args))


async def test_register_and_list_on_etcd(tmp_path):
    async with open_etcd(tmp_path / "etcd", members=1) as cluster:
        url = cluster.registry_url
        added = await run(tmp_path, "registry", "cluster", "add", "west-1", "--region", "eu-west", "--zone", "eu-west-1a", "--registry", url)
        assert added.returncode == 0, added.stderr
        reg = await run(tmp_path, "service", "register", "hello.demo", "--cluster", "west-1", "--endpoint", "127.0.3.10:8080", "--registry", url)
        assert reg.returncode == 0, reg.stderr
        one_line_error(
            await run(tmp_path, "service", "register", "hello.demo", "--cluster", "west-1", "--endpoint", "127.0.3.10:8080", "--registry", url),
            "already registered",
        )
        rows = json.loads((await run(tmp_path, "service", "list", "--json", "--registry", url)).stdout)
        assert [(r["service"], r["cluster"], r["locality"], r["total"]) for r in rows] == [("hello.demo", "west-1", "eu-west/eu-west-1a", 1)]
        status = json.loads((await run(tmp_path, "registry", "status", "--json", "--registry", url)).stdout)
        assert status["backend"] == "etcd" and status["reachable"] is True and status["revision"] >= 3
    assert not (tmp_path / "isthmus-registry.db").exists()
