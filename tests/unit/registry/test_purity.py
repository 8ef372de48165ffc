"""The decision modules of the registry stay pure: no trio, no sockets, no clock of their own."""

from __future__ import annotations

import subprocess
import sys

PURE = ("registry.model", "registry.codec", "registry.diff", "registry.backoff")


def test_pure_modules_import_no_io_framework():
    code = (
        "import sys\n"
        f"for name in {PURE!r}: __import__(name)\n"
        "bad = sorted(m for m in ('trio', 'httpx', 'sqlite3', 'gateway', 'federation') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_registry_never_imports_gateway_or_federation():
    from pathlib import Path

    import registry

    root = Path(registry.__file__).parent
    for path in root.glob("*.py"):
        text = path.read_text()
        assert "from gateway" not in text and "import gateway" not in text, path
        assert "from federation" not in text and "import federation" not in text, path
