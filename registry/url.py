"""Choosing a backend by URL, and following a catalog through backend outages.

Owns the registry URL forms (DESIGN): `sqlite:///path/registry.db` (a relative path after
the third slash, an absolute one with a fourth: `sqlite:////var/lib/isthmus/registry.db`),
`etcd://host:port[,host:port...]`, `consul://host:port`. `parse_registry_url` validates,
`open_backend(url)` is the async context manager that yields a connected `Backend`
(the etcd and consul modules are imported only when their URL is used), and
`serve_followed_catalog` is the loop long-running callers (control plane, gateways) use:
it watches one cluster's catalog, and while the backend is unreachable keeps the
last-known-good catalog, reports it stale, and reconnects with capped exponential backoff.
Imports trio and the registry only (never `gateway` or `federation`).
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import trio

from registry.backend import Backend
from registry.backoff import Backoff
from registry.errors import RegistryUnavailable, ValidationError
from registry.model import Catalog, parse_host_port

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///./isthmus-registry.db"
SCHEMES = ("sqlite", "etcd", "consul")
DEFAULT_BACKOFF = Backoff(base_s=0.1, cap_s=10.0)


@attrs.frozen
class RegistryURL:
    scheme: str
    path: str = ""  # sqlite
    hosts: tuple[str, ...] = ()  # etcd, consul: host:port

    @property
    def address(self) -> str:
        return self.path if self.scheme == "sqlite" else ",".join(self.hosts)


def parse_registry_url(url: str) -> RegistryURL:
    """Validate a registry URL; `ValidationError` naming it and the expected forms."""
    forms = "sqlite:///path.db, etcd://host:port[,host:port], consul://host:port"
    if not isinstance(url, str) or "://" not in url:
        raise ValidationError(f"registry url: {url!r} is not a registry URL ({forms})")
    scheme, _, rest = url.partition("://")
    if scheme == "sqlite":
        if not rest.startswith("/") or len(rest) < 2:
            raise ValidationError(f"registry url: {url!r}: a sqlite URL is sqlite:///path/to/registry.db")
        path = rest[1:]
        if "?" in path or "#" in path:
            raise ValidationError(f"registry url: {url!r}: a sqlite URL takes no query or fragment")
        return RegistryURL("sqlite", path=path)
    if scheme in ("etcd", "consul"):
        hosts = tuple(h.strip() for h in rest.rstrip("/").split(",") if h.strip())
        if not hosts:
            raise ValidationError(f"registry url: {url!r}: name at least one host:port")
        if scheme == "consul" and len(hosts) != 1:
            raise ValidationError(f"registry url: {url!r}: a consul URL names one agent host:port")
        for host in hosts:
            try:
                parse_host_port("registry url", host)
            except ValidationError:
                raise ValidationError(f"registry url: {url!r}: {host!r} is not host:port") from None
        return RegistryURL(scheme, hosts=hosts)
    raise ValidationError(f"registry url: {url!r}: unknown scheme {scheme!r} ({forms})")


def unavailable(address: str, detail: str, hint: str) -> RegistryUnavailable:
    """A `RegistryUnavailable` from a status detail, without repeating what the detail already says."""
    prefix = f"registry at {address} is unavailable: "
    reason = detail[len(prefix) :] if detail.startswith(prefix) else (detail or "not reachable")
    return RegistryUnavailable(address, reason, "" if reason.endswith(")") else hint)


@contextlib.asynccontextmanager
async def _entered(backend: Any) -> AsyncIterator[Backend]:
    if hasattr(backend, "__aenter__"):
        async with backend as entered:
            yield entered if isinstance(entered, Backend) else backend
    else:
        try:
            yield backend
        finally:
            with trio.CancelScope(shield=True):
                await backend.aclose()


@contextlib.asynccontextmanager
async def open_backend(url: str, *, check: bool = True) -> AsyncIterator[Backend]:
    """The backend named by `url`, connected; `RegistryUnavailable` (address and hint) if unreachable.

    With `check` the backend's `status()` is asked once before it is handed out, so an
    etcd or consul that is down fails here with one line rather than at first use.
    """
    parsed = parse_registry_url(url)
    if parsed.scheme == "sqlite":
        from registry.sqlite import open_sqlite_backend

        async with open_sqlite_backend(parsed.path) as backend:
            yield backend
        return
    if parsed.scheme == "etcd":
        from registry.etcd import EtcdBackend

        backend: Any = EtcdBackend(list(parsed.hosts))
        hint = "is etcd running there? start it or pass another --registry URL"
    else:
        from registry.consul import ConsulBackend

        backend = ConsulBackend(parsed.hosts[0])
        hint = "is a consul agent running there? start it or pass another --registry URL"
    async with _entered(backend) as opened:
        if check:
            status = await opened.status()
            if not status.reachable:
                raise unavailable(parsed.address, status.detail, hint)
        yield opened


# ---------------------------------------------------------------------------------------------
# Following a catalog through outages
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class CatalogView:
    """What a follower hands its consumer: the catalog in use and whether it is stale."""

    catalog: Catalog | None
    stale: bool
    reason: str = ""


async def serve_followed_catalog(
    open_store: Callable[[], contextlib.AbstractAsyncContextManager[Any]],
    cluster: str,
    on_view: Callable[[CatalogView], Awaitable[None] | None],
    *,
    backoff: Backoff = DEFAULT_BACKOFF,
    rng: random.Random | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Follow `cluster`'s catalog forever, surviving backend outages (DESIGN: static stability).

    `open_store()` yields a `registry.store.Store` (e.g. `Store(backend)` over `open_backend(url)`).
    Every new catalog is passed to `on_view(CatalogView(catalog, stale=False))`. When the
    backend becomes unreachable, `on_view` gets the last-known-good catalog with
    `stale=True` and the reason, and the follower reconnects after capped, jittered
    backoff, resuming from that catalog's revision. `task_status.started()` once the first
    catalog was delivered (or the first attempt failed: the caller then runs stale/empty).
    """
    rng = rng or random.Random()
    last: Catalog | None = None
    attempt = 0
    started = False

    async def deliver(view: CatalogView) -> None:
        result = on_view(view)
        if result is not None:
            await result

    while True:
        try:
            async with open_store() as store:
                async with contextlib.aclosing(
                    store.watch_catalog(cluster, base=last) if last is not None else store.watch_catalog(cluster)
                ) as catalogs:
                    if last is not None:
                        await deliver(CatalogView(last, stale=False))
                        if not started:
                            started = True
                            task_status.started()
                    async for catalog in catalogs:
                        last = catalog
                        attempt = 0
                        await deliver(CatalogView(catalog, stale=False))
                        if not started:
                            started = True
                            task_status.started()
        except RegistryUnavailable as exc:
            log.warning("registry: %s; keeping catalog r%s", exc, last.revision if last else "-")
            await deliver(CatalogView(last, stale=True, reason=str(exc)))
            if not started:
                started = True
                task_status.started()
        await trio.sleep(backoff.delay(attempt, rng))
        attempt += 1
