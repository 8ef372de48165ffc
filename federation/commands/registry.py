"""`isthmus registry`: (not yet built)."""

from __future__ import annotations

from federation.commands._common import add_noun


def add_parser(subparsers, noun: str, help_text: str) -> None:
    add_noun(subparsers, noun, help_text + " (not yet available)")
