"""Benchmarks run by `isthmus bench <name>`: one module each (see `federation.commands.bench`)."""
