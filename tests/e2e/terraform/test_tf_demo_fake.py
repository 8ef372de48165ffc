"""terraform/demo through the isthmus provider, against a fake `isthmus` that records its calls.

What a user of `terraform init && terraform apply` notices: the provider installs offline and a lock
file is written; apply runs the isthmus commands of the contract and prints the outbound ports and a
cross-region curl; a second plan shows no changes; import adopts a running cluster; a cluster that
died is planned again; destroy stops every process; bad attributes and failed commands end in one
diagnostic, never a Python traceback.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path

from tests.e2e.terraform.conftest import FAKE_ISTHMUS, alive, ok, outputs, terraform

PROVIDER_BLOCK = """
terraform {
  required_providers {
    isthmus = { source = "isthmus.local/isthmus/isthmus", version = "0.1.0" }
  }
}
provider "isthmus" { isthmus_bin = "%s" }
"""


def _calls(demo_dir: Path) -> list[str]:
    return (demo_dir / "calls.log").read_text().splitlines()


def _fake_state(demo_dir: Path) -> dict:
    return json.loads((demo_dir / "fake-state.json").read_text())


def test_apply_plan_import_destroy_with_the_1_0_3_binary(
    demo_workdir: Path, tf_env: dict[str, str], tmp_path: Path
):
    demo_dir = tmp_path / "demo"
    variables = ["-var", f"isthmus_bin={FAKE_ISTHMUS}", "-var", f"dir={demo_dir}"]
    lock = (demo_workdir / ".terraform.lock.hcl").read_text()
    assert 'provider "isthmus.local/isthmus/isthmus"' in lock and 'version     = "0.1.0"' in lock

    done = ok(terraform(demo_workdir, tf_env, "apply", "-auto-approve", *variables))
    assert "Apply complete! Resources: 12 added, 0 changed, 0 destroyed." in done.stdout
    out = outputs(demo_workdir, tf_env)
    assert out["outbound"] == {
        "east-1": "127.0.1.1:15001",
        "east-2": "127.0.2.1:15001",
        "west-1": "127.0.3.1:15001",
    }
    assert out["cross_region_curl"] == "curl -s -H 'Host: hello.demo' http://127.0.1.1:15001/"
    assert out["dir"] == str(demo_dir)

    calls = _calls(demo_dir)
    for name in ("east-1", "east-2", "west-1"):
        assert f"demo up --dir {demo_dir} --clusters {name} --bare --backend sqlite" in calls
    registered = sorted(c for c in calls if c.startswith("cluster register"))
    assert len(registered) == 3  # full mesh: one registration links a pair
    assert {tuple(sorted(peers["peers"])) for peers in _fake_state(demo_dir)["clusters"].values()} == {
        ("east-2", "west-1"), ("east-1", "west-1"), ("east-1", "east-2")
    }  # fmt: skip
    assert f"service export hello.demo --to * --config {demo_dir}/west-1.toml" in calls
    assert sum(c.startswith("service export echo.demo --to *") for c in calls) == 3
    assert f"service policy echo.demo --failover us-east,eu-west --config {demo_dir}/east-1.toml" in calls
    routes = [c for c in calls if c.startswith("service routes echo.demo --file ")]
    assert len(routes) == 1 and routes[0].endswith(f"--config {demo_dir}/east-1.toml")
    assert [r["name"] for r in _fake_state(demo_dir)["clusters"]["east-1"]["routes"]["echo.demo"]] == ["tag"]
    assert not [c for c in calls if "<token>" in c]

    # A plan right after the apply: read returns exactly what was applied.
    done = terraform(demo_workdir, tf_env, "plan", "-detailed-exitcode", *variables)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No changes." in done.stdout

    # Import adopts a running cluster and an export, and the plan stays empty.
    ok(
        terraform(
            demo_workdir,
            tf_env,
            "state",
            "rm",
            'isthmus_cluster.this["east-1"]',
            'isthmus_service_export.demo["west-1/hello.demo"]',
        )
    )
    done = ok(
        terraform(
            demo_workdir, tf_env, "import", *variables, 'isthmus_cluster.this["east-1"]', f"{demo_dir}:east-1"
        )
    )
    assert "Import successful!" in done.stdout
    ok(
        terraform(
            demo_workdir,
            tf_env,
            "import",
            *variables,
            'isthmus_service_export.demo["west-1/hello.demo"]',
            f"{demo_dir}:west-1:hello.demo",
        )
    )
    done = terraform(demo_workdir, tf_env, "plan", "-detailed-exitcode", *variables)
    assert done.returncode == 0, done.stdout + done.stderr

    # A cluster whose processes died is gone: the next plan creates it again.
    pids = {name: entry["pid"] for name, entry in _fake_state(demo_dir)["clusters"].items()}
    os.kill(pids["east-2"], signal.SIGKILL)
    done = terraform(demo_workdir, tf_env, "plan", "-detailed-exitcode", *variables)
    assert done.returncode == 2, done.stdout + done.stderr
    assert 'isthmus_cluster.this["east-2"] will be created' in done.stdout

    done = ok(terraform(demo_workdir, tf_env, "destroy", "-auto-approve", *variables))
    assert "Destroy complete!" in done.stdout
    assert not any(alive(pid) for pid in pids.values())
    assert set(_fake_state(demo_dir)["clusters"]) <= {
        "east-2"
    }  # the dead one was dropped from the state, not downed
    calls = _calls(demo_dir)
    assert f"service export hello.demo --remove --config {demo_dir}/west-1.toml" in calls
    assert f"service routes echo.demo --remove --config {demo_dir}/east-1.toml" in calls
    assert f"demo down --dir {demo_dir} --clusters west-1" in calls
    assert "Traceback" not in done.stdout + done.stderr


def test_invalid_attributes_fail_at_plan_with_the_providers_diagnostics(
    tmp_path: Path, tf_env: dict[str, str]
):
    work = tmp_path / "work"
    work.mkdir()
    demo_dir = tmp_path / "demo"
    (work / "main.tf").write_text(
        PROVIDER_BLOCK % FAKE_ISTHMUS
        + textwrap.dedent(
            f"""
            resource "isthmus_cluster" "unknown" {{
              name = "east-9"
              dir  = "{demo_dir}"
            }}
            resource "isthmus_cluster" "bad_name" {{
              name    = "East_1"
              dir     = "{demo_dir}"
              backend = "mysql"
            }}
            resource "isthmus_cluster" "wrong_region" {{
              name   = "west-1"
              dir    = "{demo_dir}"
              region = "us-east"
            }}
            resource "isthmus_peering" "self" {{
              dir     = "{demo_dir}"
              cluster = "east-1"
              peer    = "east-1"
            }}
            resource "isthmus_service_export" "bad" {{
              dir     = "{demo_dir}"
              cluster = "west-1"
              service = "hello"
              to      = ["*", "east-1"]
            }}
            resource "isthmus_failover_policy" "bad" {{
              dir      = "{demo_dir}"
              cluster  = "east-1"
              service  = "echo.demo"
              failover = ["mars"]
            }}
            """
        )
    )
    ok(terraform(work, tf_env, "init"))
    done = terraform(work, tf_env, "plan")
    assert done.returncode == 1
    text = " ".join((done.stdout + done.stderr).split())  # Terraform wraps long lines
    for summary in (
        "Error: name: unknown cluster 'east-9': the demo topology has east-1, east-2, west-1",
        "Error: name: 'East_1' is not a valid cluster name",
        "Error: backend: 'mysql' is not one of sqlite, etcd",
        "Error: region: cluster west-1 of the demo topology is in eu-west, not 'us-east'",
        "Error: peer: a cluster cannot peer with itself (east-1)",
        "Error: service: 'hello' is not a service name.namespace (e.g. echo.demo)",
        'Error: to: "*" already means every peer: list it alone',
        "Error: failover: unknown region 'mars': the demo topology has us-east, eu-west",
    ):
        assert summary in text, f"missing {summary!r} in:\n{done.stderr}"
    assert "with isthmus_cluster.unknown" in text and "on main.tf line" in text  # points at the attribute
    assert "Traceback" not in text and "rpc error" not in text
    assert not demo_dir.exists()  # nothing ran


def test_a_failed_isthmus_command_is_one_diagnostic_line(tmp_path: Path, tf_env: dict[str, str]):
    work = tmp_path / "work"
    work.mkdir()
    demo_dir = tmp_path / "demo"
    (work / "main.tf").write_text(
        PROVIDER_BLOCK % FAKE_ISTHMUS
        + f'resource "isthmus_cluster" "east1" {{\n  name = "east-1"\n  dir = "{demo_dir}"\n}}\n'
    )
    ok(terraform(work, tf_env, "init"))
    done = terraform(work, tf_env, "apply", "-auto-approve", extra_env={"FAKE_ISTHMUS_FAIL": "demo up"})
    assert done.returncode == 1
    text = " ".join(done.stderr.split())
    assert "Error: isthmus demo up: demo up: 127.0.1.1:15443 is taken by another program (pid 4242)" in text
    assert (
        f"command: {FAKE_ISTHMUS} demo up --dir {demo_dir} --clusters east-1 --bare --backend sqlite" in text
    )
    assert "Traceback" not in done.stdout + done.stderr and "rpc error" not in done.stderr
    state = ok(terraform(work, tf_env, "state", "list")).stdout
    assert "isthmus_cluster.east1" not in state  # a failed create leaves nothing in the state


def test_a_missing_isthmus_bin_is_named(tmp_path: Path, tf_env: dict[str, str]):
    work = tmp_path / "work"
    work.mkdir()
    (work / "main.tf").write_text(
        PROVIDER_BLOCK % (tmp_path / "no-such-isthmus")
        + f'resource "isthmus_cluster" "east1" {{\n  name = "east-1"\n  dir = "{tmp_path}/demo"\n}}\n'
    )
    ok(terraform(work, tf_env, "init"))
    done = terraform(work, tf_env, "plan")
    assert done.returncode == 1
    assert f"Error: isthmus_bin: {tmp_path / 'no-such-isthmus'} is not an executable file" in " ".join(
        done.stderr.split()
    )


def test_the_providers_topology_is_the_demos():
    """The provider validates cluster names against its own copy of the demo topology: it must not drift."""
    import importlib.util
    import sys

    from federation.demo.topology import CLUSTERS

    path = Path(__file__).resolve().parents[3] / "terraform" / "provider" / "isthmus_tf" / "names.py"
    spec = importlib.util.spec_from_file_location("isthmus_tf_names", path)
    names = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = names
    try:
        spec.loader.exec_module(names)
    finally:
        del sys.modules[spec.name]
    assert names.DEMO_CLUSTERS == tuple((name, region, zones) for name, region, zones, _ in CLUSTERS)


def test_import_names_what_is_wrong_with_the_id(tmp_path: Path, tf_env: dict[str, str]):
    work = tmp_path / "work"
    work.mkdir()
    demo_dir = tmp_path / "demo"
    (work / "main.tf").write_text(
        PROVIDER_BLOCK % FAKE_ISTHMUS
        + f'resource "isthmus_cluster" "east1" {{\n  name = "east-1"\n  dir = "{demo_dir}"\n}}\n'
    )
    ok(terraform(work, tf_env, "init"))
    done = terraform(work, tf_env, "import", "isthmus_cluster.east1", "east-1")
    assert done.returncode == 1
    assert "Error: import id 'east-1' is not <dir>:<name>" in done.stderr
    done = terraform(work, tf_env, "import", "isthmus_cluster.east1", f"{demo_dir}:east-1")
    assert done.returncode == 1
    assert f"Error: cannot import {demo_dir}:east-1: cluster east-1 is not running in {demo_dir}" in " ".join(
        done.stderr.split()
    )
    assert "Traceback" not in done.stderr
