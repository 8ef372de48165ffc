"""The gateway's decision modules stay pure: no trio, no sockets, no clock (STYLE: decide in pure code)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gateway

PURE = ("config", "picker", "routes", "sni", "h1guard", "headers", "authz")
FORBIDDEN = {"trio", "socket", "ssl", "time", "federation", "asyncio"}


@pytest.mark.parametrize("name", PURE)
def test_pure_module_imports_no_io(name):
    path = Path(gateway.__file__).parent / f"{name}.py"
    tree = ast.parse(path.read_text())
    assert ast.get_docstring(tree), f"{name} has no module docstring"
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN, f"gateway.{name} imports {sorted(imported & FORBIDDEN)}"


def test_gateway_never_imports_federation():
    for path in Path(gateway.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("federation"), path
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("federation") for a in node.names), path
