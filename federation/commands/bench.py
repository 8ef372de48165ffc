"""`isthmus bench <what>`: benchmarks that print a table and write JSON under benchmarks/results/.

Each benchmark is a module `federation.bench.<what>` exposing `HELP` (one line) and
`add_arguments(parser)` and `run(args) -> int`. Numbers live here, never in tests.
"""

from __future__ import annotations

import importlib
import pkgutil

import federation.bench
from federation.commands._common import add_noun, add_verb


def add_parser(subparsers, noun: str, help_text: str) -> None:
    verbs = add_noun(subparsers, noun, help_text)
    for info in sorted(pkgutil.iter_modules(federation.bench.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"federation.bench.{info.name}")
        parser = add_verb(verbs, info.name, module.HELP, module.run)
        parser.add_argument(
            "--out",
            metavar="FILE",
            default=f"benchmarks/results/{info.name}.json",
            help="where to write the JSON results (default: %(default)s)",
        )
        module.add_arguments(parser)
