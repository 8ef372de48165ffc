"""The command line's contract: every noun has --help, bad input is one line and exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from federation.cli import NOUNS, main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "federation.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_top_level_help_lists_every_noun():
    result = run_cli("--help")
    assert result.returncode == 0
    for noun, _ in NOUNS:
        assert noun in result.stdout


@pytest.mark.parametrize("noun", [n for n, _ in NOUNS])
def test_every_noun_has_help(noun, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([noun, "--help"])
    assert exit_info.value.code == 0
    assert noun in capsys.readouterr().out


def test_unknown_noun_is_one_line_and_exit_2():
    result = run_cli("frobnicate")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "invalid choice: 'frobnicate'" in result.stderr
