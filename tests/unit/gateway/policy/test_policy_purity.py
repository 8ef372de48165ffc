"""Traffic policy stays pure: no trio, sockets or clock in `gateway.policy`, so the gateway can call it
per request and tests can drive it with a seeded `random.Random` and no event loop."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import gateway.policy

POLICY_DIR = Path(gateway.policy.__file__).parent
MODULES = sorted(POLICY_DIR.glob("*.py"))
FORBIDDEN = {"trio", "socket", "time", "asyncio", "threading", "federation", "selectors", "ssl"}
# Module-level randomness would make decisions irreproducible: only `random.Random` (the type) may be named.
RANDOM_ALLOWED = {"Random"}


def imported_roots(tree: ast.AST) -> set[str]:
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_policy_modules_import_no_io_and_no_clock(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    assert imported_roots(tree) & FORBIDDEN == set()
    shared_random = [
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "random"
        and node.attr not in RANDOM_ALLOWED
    ]
    assert shared_random == [], f"{path.name} uses the shared random generator: {shared_random}"
    assert ast.get_docstring(tree), f"{path.name} has no module docstring"


def test_importing_gateway_policy_does_not_load_trio():
    code = (
        "import sys, gateway; before = 'trio' in sys.modules; "
        "import gateway.policy, gateway.policy.table, gateway.policy.trace, gateway.policy.accesslog; "
        "print(before, 'trio' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[1] == out[0], "gateway.policy pulled in trio"


def test_the_access_log_file_writer_is_trio_free():
    tree = ast.parse((POLICY_DIR.parent / "accesslog_file.py").read_text())
    assert imported_roots(tree) & {"trio", "federation"} == set()
