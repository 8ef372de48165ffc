"""`isthmus_route_rules` with the 1.0.3 binary against the fake `isthmus`: apply writes the rules through
`isthmus service routes --file`, a plan right after is empty (the rules read back compare as JSON),
a change updates in place, rules removed behind Terraform's back are planned again, import adopts
stored rules, destroy removes them; a rule the control plane refuses is one diagnostic naming it,
and a malformed `rules` value is refused at plan time."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.e2e.terraform.conftest import FAKE_ISTHMUS, ok, terraform
from tests.e2e.terraform.test_tf_demo_fake import PROVIDER_BLOCK

CANARY = """[
    { name = "canary", match = { path_prefix = "/" },
      split = [ { subset = { version = "v1" }, weight = 90 }, { subset = { version = "v2" }, weight = %d } ] },
  ]"""


def main_tf(demo_dir: Path, rules: str) -> str:
    return PROVIDER_BLOCK % FAKE_ISTHMUS + textwrap.dedent(
        f"""
        resource "isthmus_cluster" "east1" {{
          name = "east-1"
          dir  = "{demo_dir}"
        }}
        resource "isthmus_route_rules" "echo" {{
          dir     = "{demo_dir}"
          cluster = isthmus_cluster.east1.name
          service = "echo.demo"
          rules   = {rules}
        }}
        """
    )


def stored(demo_dir: Path) -> dict:
    state = json.loads((demo_dir / "fake-state.json").read_text())
    return state["clusters"].get("east-1", {}).get("routes", {})


@pytest.fixture
def work(tmp_path: Path, tf_env: dict[str, str]) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "main.tf").write_text(main_tf(tmp_path / "demo", "jsonencode(%s)" % (CANARY % 10)))
    ok(terraform(work, tf_env, "init"))
    return work


def test_apply_plan_update_read_import_destroy(work: Path, tf_env: dict[str, str], tmp_path: Path):
    demo_dir = tmp_path / "demo"
    done = ok(terraform(work, tf_env, "apply", "-auto-approve"))
    assert "Apply complete! Resources: 2 added, 0 changed, 0 destroyed." in done.stdout
    assert stored(demo_dir)["echo.demo"][0]["split"][1] == {"subset": {"version": "v2"}, "weight": 10}
    calls = (demo_dir / "calls.log").read_text().splitlines()
    assert any(c.startswith("service routes echo.demo --file ") and c.endswith(f"--config {demo_dir}/east-1.toml")
               for c in calls)  # fmt: skip

    # A 80/20 canary: an update in place, not a replacement.
    eighty_twenty = (CANARY % 20).replace("weight = 90", "weight = 80")
    (work / "main.tf").write_text(main_tf(demo_dir, f"jsonencode({eighty_twenty})"))
    done = ok(terraform(work, tf_env, "apply", "-auto-approve"))
    assert "Resources: 0 added, 1 changed, 0 destroyed." in done.stdout
    assert [arm["weight"] for arm in stored(demo_dir)["echo.demo"][0]["split"]] == [80, 20]

    # Removed behind Terraform's back: the next plan writes them again.
    state = json.loads((demo_dir / "fake-state.json").read_text())
    del state["clusters"]["east-1"]["routes"]["echo.demo"]
    (demo_dir / "fake-state.json").write_text(json.dumps(state))
    done = terraform(work, tf_env, "plan", "-detailed-exitcode")
    assert done.returncode == 2 and "isthmus_route_rules.echo will be created" in done.stdout
    ok(terraform(work, tf_env, "apply", "-auto-approve"))

    # Import adopts the stored rules; the plan stays empty.
    ok(terraform(work, tf_env, "state", "rm", "isthmus_route_rules.echo"))
    done = terraform(work, tf_env, "import", "isthmus_route_rules.echo", f"{demo_dir}:east-1:hello.demo")
    assert done.returncode == 1
    assert f"Error: cannot import {demo_dir}:east-1:hello.demo: east-1 has no route rules stored for hello.demo" in " ".join(
        done.stderr.split())  # fmt: skip
    done = ok(terraform(work, tf_env, "import", "isthmus_route_rules.echo", f"{demo_dir}:east-1:echo.demo"))
    assert "Import successful!" in done.stdout
    done = terraform(work, tf_env, "plan", "-detailed-exitcode")
    assert done.returncode == 0, done.stdout + done.stderr

    done = ok(terraform(work, tf_env, "destroy", "-auto-approve"))
    assert f"service routes echo.demo --remove --config {demo_dir}/east-1.toml" in (demo_dir / "calls.log").read_text()
    assert "Traceback" not in done.stdout + done.stderr


def test_a_refused_rule_is_one_diagnostic_and_nothing_is_stored(work: Path, tf_env: dict[str, str], tmp_path: Path):
    demo_dir = tmp_path / "demo"
    (work / "main.tf").write_text(main_tf(demo_dir, "jsonencode(%s)" % (CANARY % 5)))
    done = terraform(work, tf_env, "apply", "-auto-approve")
    assert done.returncode == 1
    text = " ".join(done.stderr.split())
    assert text.count("Error: ") == 1
    assert 'Error: isthmus service routes: echo.demo route "canary": weights sum to 95, not 100' in text
    assert "Traceback" not in done.stdout + done.stderr and "rpc error" not in text
    assert "echo.demo" not in stored(demo_dir)
    assert "isthmus_route_rules.echo" not in ok(terraform(work, tf_env, "state", "list")).stdout


def test_malformed_rules_are_refused_at_plan_time(work: Path, tf_env: dict[str, str], tmp_path: Path):
    demo_dir = tmp_path / "demo"
    text = main_tf(demo_dir, '"{not json"')
    text += textwrap.dedent(
        f"""
        resource "isthmus_route_rules" "nameless" {{
          dir     = "{demo_dir}"
          cluster = "east-1"
          service = "echo.demo"
          rules   = jsonencode([{{ match = {{ path_prefix = "/" }} }}, {{ name = "a" }}, {{ name = "a" }}])
        }}
        resource "isthmus_route_rules" "not_a_list" {{
          dir     = "{demo_dir}"
          cluster = "east-9"
          service = "echo"
          rules   = jsonencode({{ name = "a" }})
        }}
        """
    )
    (work / "main.tf").write_text(text)
    done = terraform(work, tf_env, "plan")
    assert done.returncode == 1
    text = " ".join(done.stderr.split())
    for summary in (
        "Error: rules: not JSON",
        "Error: rules: rule #1 has no name",
        'Error: rules: rule "a" is given twice',
        "Error: rules: must be a JSON list of rules",
        "Error: cluster: unknown cluster 'east-9'",
        "Error: service: 'echo' is not a service name.namespace",
    ):
        assert summary in text, f"missing {summary!r} in:\n{done.stderr}"
    assert "Traceback" not in text
    assert not demo_dir.exists()  # nothing ran
