"""The built-in dashboard's I/O shell: the ASGI routes and the scraper task.

Routes (a plain ASGI callable, served by the control plane's hypercorn on `control.api`):

    GET /dashboard/                the page (static HTML/CSS/JS from `static/`, no external CDN)
    GET /dashboard/static/NAME     its files
    GET /api/v1/overview           the view model (`MeshModel.overview`) as JSON

Anything else goes to `fallback` (the control plane's own API) or is a JSON 404.
`serve_scraper` fetches every target's `/metrics` each second with httpx and feeds the pure
`federation.dashboard.model.MeshModel`. `make_dashboard(targets_fn)` returns both, ready to mount; `mount_dashboard(api, targets_fn)`
puts the routes in front of the control plane's API and runs the scraper for the app's lifespan.
Imports trio, httpx and `federation.config`; never `gateway`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from federation.dashboard.model import MeshModel, Target

log = logging.getLogger("isthmus.federation.dashboard")

STATIC_DIR = Path(__file__).parent / "static"
CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
}
# The page loads only its own files: no inline script, no other origin (it must work offline).
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
     b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]  # fmt: skip

ASGIApp = Callable[[dict[str, Any], Callable[..., Any], Callable[..., Any]], Awaitable[None]]
TargetsFn = Callable[[], Iterable[Target]]


def targets_from_config(config: Any, *, control_render: Callable[[], bytes] | None = None) -> list[Target]:
    """The targets one cluster's control plane scrapes: its gateway's admin `/metrics`, and its own
    metrics in process when `control_render` is given (`federation.config.ClusterConfig`)."""
    cluster = config.cluster
    targets = [Target(f"gateway {cluster.name}", "gateway", cluster.name, url=f"http://{config.admin}/metrics",
                      region=cluster.region, zones=cluster.zones)]  # fmt: skip
    if control_render is not None:
        targets.append(Target(f"control {cluster.name}", "control", cluster.name, region=cluster.region,
                              zones=cluster.zones, render=control_render))  # fmt: skip
    return targets


async def _scrape_one(client: httpx.AsyncClient, target: Target, timeout_s: float) -> str | bytes | BaseException:
    if target.render is not None:
        try:
            return target.render()
        except (OSError, ValueError, RuntimeError) as exc:
            return exc
    try:
        with trio.fail_after(timeout_s):
            response = await client.get(target.url)
    except trio.TooSlowError:
        return TimeoutError(f"no answer within {timeout_s:g} s")
    except httpx.HTTPError as exc:
        return ConnectionError(str(exc) or type(exc).__name__)
    if response.status_code != 200:
        return ConnectionError(f"HTTP {response.status_code} from {target.url}")
    return response.content


async def scrape_round(client: httpx.AsyncClient, targets: Sequence[Target], *,
                       timeout_s: float) -> list[tuple[Target, str | bytes | BaseException]]:
    """Scrape every target concurrently; each result is the text or the error it failed with."""
    results: list[Any] = [None] * len(targets)

    async def one(i: int, target: Target) -> None:
        results[i] = await _scrape_one(client, target, timeout_s)

    async with trio.open_nursery() as nursery:
        for i, target in enumerate(targets):
            nursery.start_soon(one, i, target)
    return list(zip(targets, results, strict=True))


async def serve_scraper(targets: TargetsFn | Iterable[Target], model: MeshModel, *, interval_s: float = 1.0,
                        timeout_s: float = 0.8, wall_clock: Callable[[], float] = time.time,
                        task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Scrape `targets` every `interval_s` into `model` until cancelled; started after the first round."""
    targets_fn = targets if callable(targets) else (lambda fixed=tuple(targets): fixed)
    started = False
    async with httpx.AsyncClient(trust_env=False, headers={"accept": "text/plain"}) as client:
        while True:
            deadline = trio.current_time() + interval_s
            current = list(targets_fn())
            results = await scrape_round(client, current, timeout_s=timeout_s)
            model.ingest_round(wall_clock(), results)
            if not started:
                started = True
                task_status.started(model)
            await trio.sleep_until(deadline)


def _static_files() -> dict[str, tuple[bytes, bytes]]:
    files = {}
    for path in sorted(STATIC_DIR.iterdir()):
        if path.is_file() and path.suffix in CONTENT_TYPES:
            files[path.name] = (CONTENT_TYPES[path.suffix], path.read_bytes())
    return files


def make_app(model: MeshModel, *, fallback: ASGIApp | None = None,
             wall_clock: Callable[[], float] = time.time) -> ASGIApp:
    """The dashboard's ASGI app over `model`; other paths go to `fallback` (or 404)."""
    files = _static_files()

    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        path = scope.get("path", "")
        mine = scope["type"] == "http" and (path == "/dashboard" or path.startswith("/dashboard/")
                                            or path == "/api/v1/overview")  # fmt: skip
        if not mine:
            if fallback is not None:
                await fallback(scope, receive, send)
            elif scope["type"] == "lifespan":
                await _lifespan(receive, send)
            elif scope["type"] == "http":
                await _send(send, 404, b"application/json", b'{"error":"not found: try /dashboard/"}')
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _send(send, 405, b"application/json", b'{"error":"method not allowed"}', [(b"allow", b"GET, HEAD")])
            return
        head = scope["method"] == "HEAD"
        if path == "/api/v1/overview":
            body = json.dumps(model.overview(wall_clock()), separators=(",", ":")).encode()
            await _send(send, 200, b"application/json", body, [(b"cache-control", b"no-store")], head=head)
        elif path == "/dashboard":
            await _send(send, 308, b"text/plain", b"see /dashboard/\n", [(b"location", b"/dashboard/")], head=head)
        elif path == "/dashboard/":
            ctype, body = files["index.html"]
            await _send(send, 200, ctype, body, SECURITY_HEADERS + [(b"cache-control", b"no-cache")], head=head)
        elif path.startswith("/dashboard/static/") and path[len("/dashboard/static/"):] in files:
            ctype, body = files[path[len("/dashboard/static/"):]]
            await _send(send, 200, ctype, body, SECURITY_HEADERS + [(b"cache-control", b"no-cache")], head=head)
        else:
            await _send(send, 404, b"application/json", b'{"error":"not found: try /dashboard/"}', head=head)

    return app


def make_dashboard(targets_fn: TargetsFn, *, fallback: ASGIApp | None = None, interval_s: float = 1.0,
                   model: MeshModel | None = None) -> tuple[ASGIApp, Callable[..., Awaitable[None]]]:
    """`(asgi_app, scraper)`: mount the app (it passes other paths to `fallback`) and
    `await nursery.start(scraper)`."""
    model = model or MeshModel()
    return make_app(model, fallback=fallback), partial(serve_scraper, targets_fn, model, interval_s=interval_s)


def mount_dashboard(api: ASGIApp, targets_fn: TargetsFn, *, interval_s: float = 1.0,
                    model: MeshModel | None = None) -> ASGIApp:
    """`api` with the dashboard in front of it and the scraper running for the app's lifespan: the
    control plane serves `mount_dashboard(make_app(plane), lambda: targets_from_config(plane.config))`."""
    app, scraper = make_dashboard(targets_fn, fallback=api, interval_s=interval_s, model=model)

    async def mounted(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scraper)
            await api(scope, receive, send)
            nursery.cancel_scope.cancel()

    return mounted


async def _lifespan(receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _send(send: Callable[..., Any], status: int, ctype: bytes, body: bytes,
                extra: list[tuple[bytes, bytes]] | None = None, *, head: bool = False) -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())] + (extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
