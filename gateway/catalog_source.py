"""Where a gateway's catalog comes from: the `CatalogSource` interface and the catalog file.

A catalog source is an async iterable of immutable `registry.model.Catalog` values with
last-known-good semantics: it yields a catalog whenever a newer, valid one is known, and never
yields an invalid one (a bad update is logged once and the previous catalog stays in force).
`FileCatalogSource` reads a JSON or TOML catalog file (`registry.codec` shape) and polls its
modification time with `trio.sleep`; the control plane's watch stream implements the same interface.

Imports trio and `registry`; never `federation`.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Protocol

import trio

from gateway.errors import ConfigInvalid
from registry.codec import catalog_from_json, loads
from registry.errors import ValidationError
from registry.model import Catalog

log = logging.getLogger("isthmus.gateway.catalog")


class CatalogSource(Protocol):
    """An async iterable of catalogs, newest last; each yielded value is complete and valid."""

    def __aiter__(self) -> AsyncIterator[Catalog]: ...


def read_catalog(path: Path) -> Catalog:
    """Read one catalog file (`.toml` as TOML, anything else as JSON); errors name the file and field."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigInvalid(f"{path}: cannot read catalog: {exc.strerror}") from None
    try:
        if path.suffix == ".toml":
            try:
                data = tomllib.loads(raw.decode())
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ValidationError(f"not valid TOML: {exc}") from None
        else:
            data = loads(raw, "catalog")
        return catalog_from_json(data, "catalog")
    except ValidationError as exc:
        raise ConfigInvalid(f"{path}: {exc}") from None


class StaticCatalogSource:
    """Yields the given catalogs in order, then waits forever (tests and fixed deployments)."""

    def __init__(self, catalogs: Catalog | Iterable[Catalog]) -> None:
        self._catalogs = (catalogs,) if isinstance(catalogs, Catalog) else tuple(catalogs)

    async def __aiter__(self) -> AsyncIterator[Catalog]:
        for catalog in self._catalogs:
            yield catalog
        await trio.sleep_forever()


class FileCatalogSource:
    """A catalog file, reloaded when its modification time or size changes.

    The first read must succeed (`ConfigInvalid` otherwise: a gateway with no catalog cannot
    serve). Later bad versions are logged on one line and skipped; the last good one stays.
    """

    def __init__(self, path: str | Path, *, poll_interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self.poll_interval_s = poll_interval_s
        self.last_error: str | None = None

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    async def __aiter__(self) -> AsyncIterator[Catalog]:
        stamp = self._stamp()
        catalog = read_catalog(self.path)
        yield catalog
        while True:
            await trio.sleep(self.poll_interval_s)
            new_stamp = self._stamp()
            if new_stamp == stamp or new_stamp is None:
                continue
            stamp = new_stamp
            try:
                catalog = read_catalog(self.path)
            except ConfigInvalid as exc:
                self.last_error = str(exc)
                log.warning("catalog reload failed, keeping revision %s: %s", catalog.revision, exc)
                continue
            self.last_error = None
            yield catalog
