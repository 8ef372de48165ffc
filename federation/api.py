"""The control plane's HTTP API (ASGI, served by hypercorn's trio worker on `control.api`, loopback).

Operator calls (the CLI and the dashboard; refused when they arrive across a cluster boundary):

    GET    /metrics                         Prometheus text (`federation.metrics`)
    GET    /v1/status                       cluster, local and served revisions, registry staleness
    GET    /v1/catalog                      the merged catalog (snapshot message: epoch, revision, catalog)
    GET    /v1/catalog/watch?from=R&epoch=E newline-delimited JSON: snapshot or deltas, then heartbeats
    GET    /v1/peers                        one status object per peer (state, revision, staleness, RTT...)
    GET    /v1/peers/NAME/check             a verdict per check
    DELETE /v1/peers/NAME                   unlink a peer
    POST   /v1/peering/token                {"peer": NAME, "ttl_s": S} -> {"token": ..., "expires_at": ...}
    POST   /v1/peering/register             {"token": TOKEN} -> the new peer
    GET    /v1/services/NAME.NS/policy      the failover policy the registry holds for the service
    PUT    /v1/services/NAME.NS/policy      body: the `[policies."svc"]` table as JSON -> what was stored
    DELETE /v1/services/NAME.NS/policy      remove it (the config's `[policies]` default applies again)
    GET    /v1/services/NAME.NS/routes      {"rules": [...], "stored": ..., "revision": R}
    PUT    /v1/services/NAME.NS/routes      body {"rules": [...]} (`[[routes."svc"]]` tables) -> what was stored
    DELETE /v1/services/NAME.NS/routes      remove them (the config's `[routes]` default applies again)

Policy and route-rule writes are validated before anything is written (`federation.traffic`): a
refusal is 400 naming the rule, and the registry and the gateways' tables are untouched; a service
the cluster neither registers nor imports is 404; a registry that cannot be reached is 503. Every
answer carries what the registry holds for the service and the registry revision.

Federation calls (from a peer, forwarded by this cluster's east-west gateway with the verified
identity and the forward secret; see `federation.control` and `gateway.federation_route`):

    GET    /v1/federation/export?peer=NAME           what this cluster exports to NAME (snapshot)
    GET    /v1/federation/watch?peer=NAME&from=R     its import stream (snapshot or deltas, heartbeats)
    GET    /v1/federation/probe                      this cluster's name and wall-clock time
    GET    /v1/federation/summary?peer=NAME          this cluster's dashboard summary for NAME (numbers, few KB)
    POST   /v1/federation/redeem                     spend a peering token's secret (no identity needed)

`export`, `watch` and `summary` need a verified identity of the cluster named by `peer`, and that cluster
must be linked. The redeem is also accepted on the bootstrap listener (`control.federation`), which
refuses every other federation call. Errors are JSON `{"error": "<one line>"}` with a 4xx/5xx status.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import attrs
import trio

from federation import traffic
from federation.errors import FederationError
from federation.imports import view_to_json
from federation.peering import PeeringError, TokenRejected, parse_ttl
from gateway.errors import ConfigInvalid
from registry.errors import RegistryError, RegistryUnavailable, ValidationError

log = logging.getLogger("isthmus.federation.api")


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


@attrs.frozen
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: bytes
    via: str  # federation.control.VIA_LOCAL, VIA_CROSSING or VIA_GATEWAY
    identity: str | None
    params: dict[str, str] = attrs.field(factory=dict)  # the `{name}` segments of a route's path

    @property
    def crossed(self) -> bool:
        """Whether the request came across a cluster boundary."""
        return self.via != "local"

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except ValueError:
            raise HttpError(400, "the request body is not JSON") from None

    def int_query(self, name: str, default: int | None = None) -> int | None:
        value = self.query.get(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise HttpError(400, f"{name}: {value!r} is not an integer") from None


@attrs.frozen
class Streamed:
    messages: AsyncIterator[dict[str, Any]]


@attrs.frozen
class Raw:
    body: bytes
    content_type: str


Handler = Callable[[Any, Request], Awaitable[Any]]
ROUTES: dict[tuple[str, str], tuple[str, Handler]] = {}
# Paths with `{name}` segments (one path segment each), tried in order after the exact paths.
PATTERNS: list[tuple[str, re.Pattern[str], str, Handler]] = []


def route(method: str, path: str, *, kind: str = "operator") -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        if "{" in path:
            pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(path))
            PATTERNS.append((method, re.compile(pattern + "$"), kind, fn))
        else:
            ROUTES[(method, path)] = (kind, fn)
        return fn

    return register


def _lookup(req: Request) -> tuple[tuple[str, Handler] | None, Request, bool]:
    """(kind and handler or None, the request with its path parameters, whether the path exists)."""
    entry = ROUTES.get((req.method, req.path))
    if entry is not None:
        return entry, req, True
    exists = any(path == req.path for _, path in ROUTES)
    for method, pattern, kind, fn in PATTERNS:
        match = pattern.match(req.path)
        if match is None:
            continue
        exists = True
        if method == req.method:
            return (kind, fn), attrs.evolve(req, params=match.groupdict()), True
    return None, req, exists


@route("GET", "/v1/status")
async def get_status(plane: Any, req: Request) -> Any:
    current = plane.catalogs.current
    return {
        "cluster": plane.name,
        "local_revision": plane.local.revision,
        "revision": None if current is None else current.revision,
        "epoch": plane.catalogs.epoch,
        "registry_stale": plane.local_stale or None,
        "federation": plane.federation_address,
        "peers": sorted(plane._peer_records),
        "refused_crossings": dict(plane.refused_crossings),
        "federation_calls": [{"via": via, "path": path, "count": count}
                             for (via, path), count in sorted(plane.federation_calls.items())],
    }


@route("GET", "/metrics")
async def get_metrics(plane: Any, req: Request) -> Any:
    from federation.metrics import CONTENT_TYPE

    return Raw(plane.metrics.render(), CONTENT_TYPE)


@route("GET", "/v1/catalog")
async def get_catalog(plane: Any, req: Request) -> Any:
    return plane.catalogs.snapshot_message()


@route("GET", "/v1/catalog/watch")
async def watch_catalog(plane: Any, req: Request) -> Any:
    return Streamed(
        plane.catalogs.watch_gateway(req.int_query("from"), req.query.get("epoch"), heartbeat_s=plane.heartbeat_s)
    )


@route("GET", "/v1/peers")
async def get_peers(plane: Any, req: Request) -> Any:
    return {"cluster": plane.name, "peers": plane.peers_status()}


@route("POST", "/v1/peering/token")
async def post_token(plane: Any, req: Request) -> Any:
    from federation.control import issue_peering_token

    body = req.json()
    peer = body.get("peer") if isinstance(body, dict) else None
    if not isinstance(peer, str) or not peer:
        raise HttpError(400, "peer: name the cluster the token is for")
    ttl = body.get("ttl_s", 900)
    ttl_s = parse_ttl(str(ttl))
    text, token = await trio.to_thread.run_sync(issue_peering_token, plane.config, peer, ttl_s)
    return {"token": text, "peer": peer, "expires_at": token.expires_at}


@route("POST", "/v1/peering/register")
async def post_register(plane: Any, req: Request) -> Any:
    body = req.json()
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str):
        raise HttpError(400, "token: missing")
    return await plane.register_with_token(token)


@route("GET", "/v1/services/{service}/policy")
@route("PUT", "/v1/services/{service}/policy")
@route("DELETE", "/v1/services/{service}/policy")
async def service_policy(plane: Any, req: Request) -> Any:
    return await _service_setting(traffic.POLICY, plane, req)


@route("GET", "/v1/services/{service}/routes")
@route("PUT", "/v1/services/{service}/routes")
@route("DELETE", "/v1/services/{service}/routes")
async def service_routes(plane: Any, req: Request) -> Any:
    return await _service_setting(traffic.ROUTES, plane, req)


async def _service_setting(setting: traffic.Setting, plane: Any, req: Request) -> Any:
    body = req.json() if req.method == "PUT" else None
    try:
        return await traffic.handle(setting, plane.store, plane.name, req.params["service"], req.method, body,
                                    plane.catalogs.current)  # fmt: skip
    except ConfigInvalid as exc:
        raise HttpError(400, str(exc)) from None


@route("GET", "/v1/federation/export", kind="federation")
async def get_export(plane: Any, req: Request) -> Any:
    peer = _linked(plane, req)
    return view_to_json(plane.exports.view(peer))


@route("GET", "/v1/federation/watch", kind="federation")
async def get_watch(plane: Any, req: Request) -> Any:
    peer = _linked(plane, req)
    return Streamed(plane.exports.watch_exports(peer, req.int_query("from", 0) or 0, heartbeat_s=plane.heartbeat_s))


@route("GET", "/v1/federation/probe", kind="federation")
async def get_probe(plane: Any, req: Request) -> Any:
    return {"cluster": plane.name, "time": time.time(), "identity": req.identity}


@route("GET", "/v1/federation/summary", kind="federation")
async def get_summary(plane: Any, req: Request) -> Any:
    peer = _linked(plane, req)
    return plane.dashboard_summary(peer)


@route("POST", "/v1/federation/redeem", kind="redeem")
async def post_redeem(plane: Any, req: Request) -> Any:
    return await plane.accept_redeem(req.json())


def _linked(plane: Any, req: Request) -> str:
    peer = req.query.get("peer", "")
    if not peer:
        raise HttpError(400, "peer: missing")
    try:
        plane.linked_peer_of(req.identity, peer)
    except PermissionError as exc:
        raise HttpError(403, str(exc)) from None
    return peer


async def _dispatch(plane: Any, req: Request) -> Any:
    if req.path.startswith("/v1/peers/"):
        name = req.path[len("/v1/peers/"):]
        if req.crossed:
            raise HttpError(403, "operator calls are not accepted across clusters")
        if req.method == "DELETE" and "/" not in name:
            await plane.remove_peer(name)
            return {"removed": name}
        if req.method == "GET" and name.endswith("/check"):
            return {"checks": await plane.check_peer(name[: -len("/check")])}
        raise HttpError(404, f"no route for {req.method} {req.path}")
    entry, req, exists = _lookup(req)
    if entry is None:
        if exists:
            raise HttpError(405, f"{req.method} is not allowed on {req.path}")
        raise HttpError(404, f"no route for {req.method} {req.path}")
    kind, handler = entry
    if kind == "operator" and req.crossed:
        raise HttpError(403, "operator calls are not accepted across clusters")
    if kind == "federation" and req.via != "gateway":
        raise HttpError(403, "federation calls must arrive through this cluster's east-west gateway "
                             "(authority federation.isthmus)")
    if kind != "operator":
        plane.count_federation_call(req.via, req.path)
    return await handler(plane, req)


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, HttpError):
        return exc.status
    if isinstance(exc, TokenRejected):
        return 409 if exc.reason in ("replayed", "unknown-secret") else 400
    if isinstance(exc, RegistryUnavailable):
        return 503
    if isinstance(exc, traffic.UnknownService):
        return 404
    if isinstance(exc, PermissionError):
        return 403
    return 400


def make_app(plane: Any) -> Callable[..., Awaitable[None]]:
    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            via, identity = plane.caller_identity(scope.get("client"), headers)
            req = Request(scope["method"], scope["path"], query, body, via, identity)
            result = await _dispatch(plane, req)
        except (HttpError, FederationError, RegistryError, PeeringError, PermissionError, ValidationError) as exc:
            status = _status_of(exc)
            if status >= 403:
                log.info("api: %s %s -> %d: %s", scope["method"], scope["path"], status, exc)
            await _send_json(send, status, {"error": str(exc)})
            return
        if isinstance(result, Streamed):
            await _send_stream(send, receive, result.messages)
        elif isinstance(result, Raw):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", result.content_type.encode()), (b"content-length", str(len(result.body)).encode())]})  # fmt: skip
            await send({"type": "http.response.body", "body": result.body})
        else:
            await _send_json(send, 200, result)

    return app


async def _send_json(send: Callable[..., Any], status: int, body: Any) -> None:
    data = json.dumps(body, separators=(",", ":"), default=str).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": data})


async def _send_stream(send: Callable[..., Any], receive: Callable[..., Any], messages: AsyncIterator[dict[str, Any]]) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/x-ndjson"), (b"cache-control", b"no-store")]})  # fmt: skip
    async with trio.open_nursery() as nursery:

        async def until_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            nursery.cancel_scope.cancel()

        nursery.start_soon(until_disconnect)
        try:
            async for message in messages:
                await send({"type": "http.response.body", "body": json.dumps(message, separators=(",", ":")).encode() + b"\n",
                            "more_body": True})  # fmt: skip
        finally:
            nursery.cancel_scope.cancel()


async def serve_api(plane: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the API on `control.api` with hypercorn's trio worker until cancelled."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [plane.config.control_api]
    config.accesslog = None
    config.errorlog = logging.getLogger("isthmus.federation.hypercorn")
    config.graceful_timeout = 1.0
    config.keep_alive_timeout = 30.0
    from federation.dashboard.app import mount_dashboard, targets_from_config

    app = mount_dashboard(
        make_app(plane), lambda: targets_from_config(plane.config, control_render=plane.metrics.render),
        model=plane.mesh,
    )
    await serve(app, config, shutdown_trigger=trio.sleep_forever, task_status=task_status)
