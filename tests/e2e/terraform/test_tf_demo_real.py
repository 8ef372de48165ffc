"""terraform/demo for real: `terraform apply` brings the demo up through the real `isthmus`, a request
from east-1's outbound port to hello.demo (which runs only in west-1) is answered by west-1, east-1's
route rules for echo.demo (written through its control plane) tag its answers, and `terraform destroy`
leaves no process and no listening port behind.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.terraform.conftest import REPO, alive, ok, outputs, terraform

ISTHMUS = REPO / ".venv" / "bin" / "isthmus"


def _help(*words: str) -> str:
    done = subprocess.run([str(ISTHMUS), *words, "--help"], capture_output=True, text=True, timeout=60)
    return done.stdout if done.returncode == 0 else ""


def _missing() -> str | None:
    if not ISTHMUS.exists():
        return f"{ISTHMUS} is not installed"
    up = _help("demo", "up")
    if "--bare" not in up or "--clusters" not in up:
        return "`isthmus demo up --clusters NAME --bare` does not exist yet"
    if "--clusters" not in _help("demo", "down"):
        return "`isthmus demo down --clusters NAME` does not exist yet"
    return None


def _listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, int(port))) == 0


@pytest.mark.slow
def test_terraform_apply_brings_the_demo_up_and_destroy_takes_it_down(
    demo_workdir: Path, tf_env: dict[str, str], tmp_path: Path
):
    reason = _missing()
    if reason:
        pytest.skip(reason)
    demo_dir = tmp_path / "demo"
    variables = ["-var", f"isthmus_bin={ISTHMUS}", "-var", f"dir={demo_dir}"]
    if "--failover" not in _help("service", "policy"):
        variables += ["-var", "echo_failover=[]"]  # `isthmus service policy` does not exist yet
    started = time.monotonic()
    try:
        ok(terraform(demo_workdir, tf_env, "apply", "-auto-approve", *variables, timeout=300))
        applied = time.monotonic() - started
        out = outputs(demo_workdir, tf_env)
        body = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                response = httpx.get(
                    f"http://{out['outbound']['east-1']}/", headers={"Host": "hello.demo"}, timeout=2
                )
                if response.status_code == 200:
                    body = response.json()
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        ready = time.monotonic() - started
        assert body is not None, (
            "no answer from hello.demo through east-1's outbound port within 30 s of the apply"
        )
        assert body["cluster"] == "west-1" and body["service"] == "hello.demo"
        print(
            f"\nterraform apply: {applied:.1f} s; first cross-region answer: {ready:.1f} s after starting the apply"
        )
        # isthmus_route_rules.echo_east1, written through east-1's control plane, reaches its gateway.
        tagged = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and tagged is None:
            try:
                response = httpx.get(f"http://{out['outbound']['east-1']}/", headers={"Host": "echo.demo"}, timeout=2)
                if response.headers.get("x-isthmus-route") == "echo-tag":
                    tagged = response
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert tagged is not None, "echo.demo answers through east-1 never carried the route rule's header"
        shown = subprocess.run([str(ISTHMUS), "service", "routes", "echo.demo", "--show", "--json", "--config",
                                out["configs"]["east-1"]], capture_output=True, text=True, timeout=60)  # fmt: skip
        assert [rule["name"] for rule in json.loads(shown.stdout)["rules"]] == ["tag"], shown.stderr
        done = terraform(demo_workdir, tf_env, "plan", "-detailed-exitcode", *variables)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        status = subprocess.run(
            [str(ISTHMUS), "demo", "status", "--dir", str(demo_dir), "--json"], capture_output=True, text=True
        )
        state = json.loads(status.stdout or "null") or {}
        pids = [pid for c in state.get("clusters", []) for pid in c.get("pids", [])]
        pids += [e["pid"] for e in state.get("endpoints", []) if e.get("pid")]
        addresses = [
            c[k] for c in state.get("clusters", []) for k in ("outbound", "eastwest", "admin", "control")
        ]
        destroyed = terraform(demo_workdir, tf_env, "destroy", "-auto-approve", *variables, timeout=300)
        if destroyed.returncode != 0:
            subprocess.run(
                [str(ISTHMUS), "demo", "down", "--dir", str(demo_dir)], capture_output=True, timeout=120
            )
    ok(destroyed)
    assert pids and addresses
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.1)
    assert not [pid for pid in pids if alive(pid)], "terraform destroy left demo processes running"
    assert not [a for a in addresses if _listening(a)], "terraform destroy left demo ports listening"
