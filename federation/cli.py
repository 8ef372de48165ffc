"""The `isthmus` command line: one noun, one verb, one TOML config per cluster.

This module owns only the shape of the command line and the error contract:
every subcommand has `--help`; bad input ends with one line on stderr and exit
status 2, never a traceback (`--debug` shows it). The nouns live one per module
in `federation.commands`, each exposing `add_parser(subparsers)`; a verb's handler
is `args.run(args) -> int | None`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# The nouns, in the order `isthmus --help` lists them (DESIGN's user-facing contract).
NOUNS: tuple[tuple[str, str], ...] = (
    ("certs", "the mesh PKI: root and cluster CAs, SPIFFE identities, trust bundles"),
    ("control", "run one cluster's control plane"),
    ("gateway", "run one cluster's east-west and outbound gateway"),
    ("service", "register, export and list services"),
    ("cluster", "peer with other clusters: tokens, register, list, check"),
    ("registry", "the catalog backend: status and known clusters"),
    ("drill", "scripted failover drills with SLOs"),
    ("demo", "the local multi-cluster demo"),
    ("top", "a live view of services and cluster pairs"),
    ("bench", "benchmarks that print a table and write JSON"),
)

EXIT_BAD_INPUT = 2


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception roots whose message is meant for the user as one line."""
    roots: list[type[BaseException]] = []
    for module, name in (
        ("federation.errors", "FederationError"),
        ("certs.errors", "CertsError"),
        ("registry.errors", "RegistryError"),
        ("gateway.errors", "GatewayError"),
        ("scenarios.errors", "DrillError"),
    ):
        try:
            roots.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(roots)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (plus the usage) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="isthmus",
        description="Isthmus: a multi-cluster federated service-mesh gateway.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    nouns = parser.add_subparsers(dest="noun", metavar="<noun>", parser_class=_Parser)
    nouns.required = True
    for noun, help_text in NOUNS:
        module = importlib.import_module(f"federation.commands.{noun}")
        module.add_parser(nouns, noun, help_text)
    return parser


def single_error(exc: BaseException) -> BaseException:
    """The one error inside (nested) exception groups, as trio nurseries raise them; else `exc` itself."""
    leaves: list[BaseException] = []

    def walk(inner: BaseException) -> None:
        if isinstance(inner, BaseExceptionGroup):
            for child in inner.exceptions:
                walk(child)
        else:
            leaves.append(inner)

    walk(exc)
    return leaves[0] if len(leaves) == 1 else exc


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    run = getattr(args, "run", None)
    if run is None:  # a noun without a verb
        parser.parse_args([*argv, "--help"])
        return EXIT_BAD_INPUT
    try:
        try:
            return int(run(args) or 0)
        except BaseExceptionGroup as group:
            # A trio nursery wraps the one error a user should see: show it as if raised alone.
            leaf = single_error(group)
            if leaf is group:
                raise
            raise leaf from None
    except KeyboardInterrupt:
        print("isthmus: interrupted", file=sys.stderr)
        return 130
    except user_errors() as exc:
        if args.debug:
            raise
        print(f"isthmus: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        # A file or socket named on the command line that cannot be used.
        if args.debug:
            raise
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"isthmus: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
