"""terraform/demo/setup as a user runs it twice: the second run installs nothing and prints the same
environment, whose CLI config lets Terraform reach no registry."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.e2e.terraform.conftest import REPO, SETUP


def test_setup_is_idempotent_and_configures_an_offline_terraform(tf_env: dict[str, str]):
    again = subprocess.run(
        ["bash", str(SETUP)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CHECKPOINT_DISABLE": "1"},
    )
    assert again.returncode == 0, again.stderr
    assert "installing" not in again.stderr  # already there: nothing to do but refresh the mirror
    assert "ready: Terraform v1.0.3" in again.stderr
    exports = dict(line.removeprefix("export ").split("=", 1) for line in again.stdout.splitlines())
    assert exports["CHECKPOINT_DISABLE"] == "1"
    assert exports["PATH"].startswith(f'"{REPO / ".venv-tf" / "bin"}:')
    rc = Path(exports["TF_CLI_CONFIG_FILE"].strip('"'))
    assert rc == REPO / "terraform" / "demo" / "terraform.rc"
    text = rc.read_text()
    # Only a filesystem mirror: no `direct {}` block, no network mirror, so no registry is ever asked.
    assert "filesystem_mirror" in text and "direct" not in text and "network_mirror" not in text
    mirror = REPO / ".venv-tf" / "share" / "terraform-mirror" / "isthmus.local" / "isthmus" / "isthmus"
    assert (mirror / "terraform-provider-isthmus_0.1.0_linux_amd64.zip").exists()


def test_the_modules_are_formatted_as_terraform_fmt_writes_them(tf_env: dict[str, str]):
    done = subprocess.run(
        [str(REPO / ".venv-tf" / "bin" / "terraform"), "fmt", "-check", "-recursive", "-no-color", "-diff", "."],
        cwd=REPO / "terraform", env=tf_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, f"run `terraform fmt -recursive terraform/`:\n{done.stdout}"
