"""The decision modules stay pure: no trio, no sockets, so they run anywhere and test without I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import federation

PURE = ("peering", "imports", "sync")
FORBIDDEN = {"trio", "socket", "httpx", "hypercorn", "asyncio"}


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_io(module):
    path = Path(federation.__file__).parent / f"{module}.py"
    tree = ast.parse(path.read_text())
    imported = {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not imported & FORBIDDEN
    assert ast.get_docstring(tree)
