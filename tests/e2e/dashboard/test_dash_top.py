"""`isthmus top` as an operator runs it, against the dashboard's `/api/v1/overview` of a live mesh."""

from __future__ import annotations

import json
import subprocess
import sys

import trio

from tests.conftest import free_port
from tests.integration.dashboard.support import open_live_dashboard, overview_until, service


async def isthmus(*args: str) -> subprocess.CompletedProcess:
    return await trio.run_process([sys.executable, "-m", "federation.cli", *args], capture_stdout=True,
                                  capture_stderr=True, check=False)  # fmt: skip


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], result.stderr
    return lines[0]


async def test_top_once_shows_the_services_and_pairs_the_dashboard_shows(dashboard_pki, tmp_path):
    async with open_live_dashboard(dashboard_pki) as live:
        await overview_until(live.url, lambda v: (s := service(v, "echo.demo")) is not None and s["rps"] > 0)
        address = live.url.removeprefix("http://")
        result = await isthmus("top", "--control", address, "--once", "--json")
        assert result.returncode == 0, result.stderr
        view = json.loads(result.stdout)
        echo = service(view, "echo.demo")
        assert echo["rps"] > 0 and echo["active_locality"] == "eu-west/eu-west-1a (west-1)"
        assert any(p["source"] == "east-1" and p["destination"] == "west-1" for p in view["pairs"])
        config = tmp_path / "east-1.toml"
        config.write_text(f'[cluster]\nname = "east-1"\nregion = "us-east"\nzones = ["us-east-1a"]\n'
                          f'[control]\napi = "{address}"\n')
        table = await isthmus("top", "--config", str(config), "--once")
        text = table.stdout.decode()
        assert table.returncode == 0 and "echo.demo" in text and "west-1" in text and "p99 ms" in text


async def test_top_bad_input_is_one_line(tmp_path):
    down = f"127.0.0.1:{free_port('127.0.0.1')}"
    assert "not reachable" in one_line_error(await isthmus("top", "--control", down, "--once"))
    assert "--config CLUSTER.TOML or --control" in one_line_error(await isthmus("top", "--once"))
    assert "--control" in one_line_error(await isthmus("top", "--control", "no-port-here", "--once"))
    assert "missing.toml" in one_line_error(await isthmus("top", "--config", str(tmp_path / "missing.toml"), "--once"))
    assert "--json needs --once" in one_line_error(await isthmus("top", "--control", down, "--json"))
