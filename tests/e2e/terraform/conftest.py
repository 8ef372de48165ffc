"""Terraform as a user runs it: the 1.0.3 binary from .venv-tf, offline, against the isthmus provider.

`terraform/demo/setup` (idempotent) prepares .venv-tf, the provider's filesystem mirror and the CLI
config; every run gets CHECKPOINT_DISABLE=1, that CLI config (a filesystem mirror and nothing else,
so no registry is ever contacted) and a temporary HOME (the provider framework caches a certificate
under $HOME/.cache).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SETUP = REPO / "terraform" / "demo" / "setup"
DEMO_MAIN = REPO / "terraform" / "demo" / "main.tf"
TERRAFORM = REPO / ".venv-tf" / "bin" / "terraform"
FAKE_ISTHMUS = Path(__file__).with_name("fake_isthmus.py")


@pytest.fixture(scope="session")
def tf_env(tmp_path_factory) -> dict[str, str]:
    """The environment of every Terraform run, after `terraform/demo/setup` has prepared .venv-tf."""
    try:
        done = subprocess.run(
            ["bash", str(SETUP)],
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, "CHECKPOINT_DISABLE": "1"},
        )
    except subprocess.TimeoutExpired:
        pytest.fail("terraform/demo/setup did not finish within 15 minutes")
    if done.returncode != 0:
        pytest.fail(f"terraform/demo/setup failed:\n{done.stderr[-3000:]}")
    exports = dict(
        line.removeprefix("export ").split("=", 1)
        for line in done.stdout.splitlines()
        if line.startswith("export ")
    )
    home = tmp_path_factory.mktemp("tf-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    env.update(
        HOME=str(home),
        CHECKPOINT_DISABLE="1",
        TF_CLI_CONFIG_FILE=exports["TF_CLI_CONFIG_FILE"].strip('"'),
        TF_IN_AUTOMATION="1",
        PATH=f"{REPO / '.venv-tf' / 'bin'}:{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}",
    )
    assert "provider_installation" in Path(env["TF_CLI_CONFIG_FILE"]).read_text()
    return env


def terraform(workdir: Path, env: dict[str, str], *args: str, extra_env: dict[str, str] | None = None,
              timeout: float = 180) -> subprocess.CompletedProcess:  # fmt: skip
    """Run the Terraform 1.0.3 binary of .venv-tf in `workdir` (no colour, no prompts)."""
    command, *rest = args
    flags = [] if command == "state" else ["-no-color"]  # `state` takes its subcommand first
    flags += ["-input=false"] if command in ("init", "plan", "apply", "destroy", "import") else []
    return subprocess.run(
        [str(TERRAFORM), command, *flags, *rest],
        cwd=workdir,
        env={**env, **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, (
        f"terraform failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    )
    return done


@pytest.fixture
def demo_workdir(tmp_path: Path, tf_env: dict[str, str]) -> Path:
    """A copy of terraform/demo/main.tf, initialised (the provider comes from the filesystem mirror)."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(DEMO_MAIN, work / "main.tf")
    done = ok(terraform(work, tf_env, "init"))
    assert "Terraform has been successfully initialized" in done.stdout
    return work


def outputs(workdir: Path, env: dict[str, str]) -> dict:
    done = ok(terraform(workdir, env, "output", "-json"))
    return {name: o["value"] for name, o in json.loads(done.stdout).items()}


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
