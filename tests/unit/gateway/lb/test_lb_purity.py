"""`gateway.lb` is pure: no module in it imports trio or any I/O, or reads the clock."""

from __future__ import annotations

import ast
from pathlib import Path

import gateway.lb

PACKAGE = Path(gateway.lb.__file__).parent
FORBIDDEN_MODULES = {
    "trio",
    "anyio",
    "asyncio",
    "socket",
    "ssl",
    "selectors",
    "subprocess",
    "threading",
    "httpx",
    "h2",
    "h11",
    "federation",
}
FORBIDDEN_CALLS = {("time", "time"), ("time", "monotonic"), ("time", "sleep"), ("time", "perf_counter")}


def modules():
    found = sorted(PACKAGE.rglob("*.py"))
    assert len(found) >= 10
    return found


def test_no_module_imports_trio_or_io():
    offenders = []
    for path in modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in FORBIDDEN_MODULES:
                    offenders.append(f"{path.name}: imports {name}")
    assert offenders == []


def test_no_module_reads_the_clock():
    offenders = []
    for path in modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "time":
                offenders.append(f"{path.name}: from time import ...")
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if (node.value.id, node.attr) in FORBIDDEN_CALLS:
                    offenders.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert offenders == []


def test_every_module_opens_with_a_docstring():
    for path in modules():
        assert ast.get_docstring(ast.parse(path.read_text())), path.name
