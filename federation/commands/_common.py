"""Pieces every noun shares: adding a verb, the `--config`/`--registry`/`--json` options, trio entry."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import trio


def add_noun(subparsers: Any, noun: str, help_text: str) -> Any:
    """Add a noun; returns the sub-parsers object to add its verbs to."""
    parser = subparsers.add_parser(noun, help=help_text, description=help_text)
    verbs = parser.add_subparsers(dest="verb", metavar="<verb>", parser_class=type(parser))
    return verbs


def add_verb(verbs: Any, name: str, help_text: str, run: Callable[[argparse.Namespace], Any]) -> argparse.ArgumentParser:
    parser = verbs.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(run=run)
    return parser


def add_config_option(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    parser.add_argument("--config", metavar="CLUSTER.TOML", required=required, help="the cluster's config file")


def add_registry_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry",
        metavar="URL",
        help=(
            "registry backend: sqlite:///relative.db or sqlite:////absolute.db (default ./isthmus-registry.db), "
            "etcd://host:port[,host:port], consul://host:port"
        ),
    )


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")


def run_async(fn: Callable[..., Any], *args: Any) -> Any:
    """Run an async handler under trio (the only event loop Isthmus uses)."""
    return trio.run(fn, *args)


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A table on the terminal (rich); plain text when stdout is not a terminal."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if cell is None else str(cell) for cell in row))
    # Piped output is for people reading logs and for grep: never truncate cells to 80 columns.
    Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200).print(table)
