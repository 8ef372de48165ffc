"""Real upstreams and a two-cluster gateway topology on loopback, for the gateway's integration tests.

Topology (DESIGN's demo, two clusters): a workload in `east-1` calls its gateway's outbound
listener; east-1 reaches `west-1`'s east-west listener over mutual TLS; west-1 serves from its
local endpoints:
- `echo.demo` (http, HTTP/1.1 endpoint: hypercorn), `h2echo.demo` (http2, h2c endpoint:
  hypercorn), `greeter.demo` (grpc, grpcio server in a thread), `db.demo` (tcp, an echo server),
  `vault.demo` (passthrough, a TLS echo server that terminates TLS itself).
"""

from __future__ import annotations

import gc
import json
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import grpc
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from certs.testing import TestPki
from certs.tls import server_context
from gateway.catalog_source import StaticCatalogSource
from gateway.config import GatewayConfig
from gateway.server import Gateway, serve_gateway
from registry.model import Catalog, Endpoint, Export, Locality, Peer, Service
from tests.conftest import free_port

EAST = Locality("us-east", "us-east-1a")
WEST = Locality("eu-west", "eu-west-1a")


# -- upstream application ---------------------------------------------------------------------------


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """/echo streams the request body back; /headers returns the request headers as JSON;
    /bytes/N sends N bytes; /slow/S answers after S seconds; /stall/S sends the head and a first
    chunk, then the rest S seconds later; /late/S sends the head alone, then the body S seconds later;
    /status/N answers N."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    base_headers = [(b"x-upstream-protocol", scope["http_version"].encode())]
    if path == "/echo":
        await send({"type": "http.response.start", "status": 200, "headers": base_headers})
        while True:
            message = await receive()
            body = message.get("body", b"")
            more = message.get("more_body", False)
            if body or not more:
                await send({"type": "http.response.body", "body": body, "more_body": more})
            if not more:
                return
    while True:  # drain the request body
        message = await receive()
        if not message.get("more_body", False):
            break
    if path == "/headers":
        payload = {
            "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
            "http_version": scope["http_version"],
            "method": scope["method"],
            "path": scope["path"],
        }
        body = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": base_headers + [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
    elif path.startswith("/bytes/"):
        n = int(path.rsplit("/", 1)[1])
        await send({"type": "http.response.start", "status": 200,
                    "headers": base_headers + [(b"content-length", str(n).encode())]})
        chunk = b"x" * 65536
        while n > 0:
            part = chunk[: min(n, len(chunk))]
            n -= len(part)
            await send({"type": "http.response.body", "body": part, "more_body": n > 0})
    elif path.startswith("/slow/"):
        await trio.sleep(float(path.rsplit("/", 1)[1]))
        await send({"type": "http.response.start", "status": 200, "headers": base_headers})
        await send({"type": "http.response.body", "body": b"slow"})
    elif path.startswith("/stall/"):
        await send({"type": "http.response.start", "status": 200, "headers": base_headers})
        await send({"type": "http.response.body", "body": b"first part, ", "more_body": True})
        await trio.sleep(float(path.rsplit("/", 1)[1]))
        await send({"type": "http.response.body", "body": b"the rest"})
    elif path.startswith("/late/"):
        await send({"type": "http.response.start", "status": 200, "headers": base_headers})
        await send({"type": "http.response.body", "body": b"", "more_body": True})  # the head goes out now
        await trio.sleep(float(path.rsplit("/", 1)[1]))
        await send({"type": "http.response.body", "body": b"late body"})
    elif path.startswith("/status/"):
        await send({"type": "http.response.start", "status": int(path.rsplit("/", 1)[1]), "headers": base_headers})
        await send({"type": "http.response.body", "body": b""})
    else:
        await send({"type": "http.response.start", "status": 404, "headers": base_headers})
        await send({"type": "http.response.body", "body": b"no such path"})


async def serve_hypercorn(nursery: trio.Nursery, host: str) -> int:
    config = HypercornConfig()
    port = free_port(host)
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.keep_alive_timeout = 30
    await nursery.start(hypercorn_serve, echo_app, config)
    return port


# -- gRPC -------------------------------------------------------------------------------------------


def _unary(request: bytes, context: Any) -> bytes:
    return b"hello " + request


def _stream(requests: Any, context: Any) -> Any:
    for request in requests:
        yield b"echo " + request


def start_grpc_server(host: str) -> tuple[grpc.Server, int]:
    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handlers = {
        "SayHello": grpc.unary_unary_rpc_method_handler(_unary),
        "Chat": grpc.stream_stream_rpc_method_handler(_stream),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("demo.Greeter", handlers),))
    port = server.add_insecure_port(f"{host}:0")
    server.start()
    return server, port


# -- TCP and TLS echo -------------------------------------------------------------------------------


async def _echo_conn(stream: trio.abc.Stream) -> None:
    try:
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return


async def serve_tcp_echo(nursery: trio.Nursery, host: str, ssl_context: Any = None) -> int:
    listeners = await trio.open_tcp_listeners(0, host=host)
    if ssl_context is not None:
        listeners = [trio.SSLListener(listener, ssl_context, https_compatible=False) for listener in listeners]
    nursery.start_soon(trio.serve_listeners, _echo_conn, listeners)
    return listeners[0].socket.getsockname()[1] if ssl_context is None else \
        listeners[0].transport_listener.socket.getsockname()[1]


async def _garbage_conn(stream: trio.abc.Stream) -> None:
    try:
        await stream.receive_some(65536)
        await stream.send_all(b"this is not HTTP\r\n\r\n")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return


async def serve_garbage(nursery: trio.Nursery, host: str) -> int:
    """An endpoint that answers every request with bytes that are not HTTP."""
    listeners = await trio.open_tcp_listeners(0, host=host)
    nursery.start_soon(trio.serve_listeners, _garbage_conn, listeners)
    return listeners[0].socket.getsockname()[1]


async def serve_resetting_h2(nursery: trio.Nursery, host: str) -> int:
    """An h2c endpoint that answers every stream with RST_STREAM(INTERNAL_ERROR)."""
    import h2.errors

    from gateway.h2conn import H2Conn

    async def on_stream(conn: H2Conn, stream: Any) -> None:
        conn.reset(stream.id, h2.errors.ErrorCodes.INTERNAL_ERROR)

    async def handler(tcp: trio.SocketStream) -> None:
        await H2Conn(tcp, client_side=False, on_stream=on_stream).run()

    listeners = await trio.open_tcp_listeners(0, host=host)
    nursery.start_soon(trio.serve_listeners, handler, listeners)
    return listeners[0].socket.getsockname()[1]


# -- topology ---------------------------------------------------------------------------------------


@attrs.define
class Topology:
    pki: TestPki
    east: Gateway
    west: Gateway
    east_catalog: Catalog
    west_catalog: Catalog
    ports: dict[str, int]

    @property
    def outbound(self) -> str:
        host, port = self.east.addresses["outbound"]
        return f"http://{host}:{port}"

    @property
    def west_eastwest(self) -> tuple[str, int]:
        return self.west.addresses["eastwest"]

    def client_context(self, cluster: str = "east-1", **kwargs: Any) -> Any:
        return self.pki.client_context(cluster, **kwargs)


def catalogs(west_gateway: str, ports: dict[str, int], host: str = "127.0.0.1") -> tuple[Catalog, Catalog]:
    services = {
        "echo.demo": Service("echo", "demo", protocol="http"),
        "h2echo.demo": Service("h2echo", "demo", protocol="http2"),
        "greeter.demo": Service("greeter", "demo", protocol="grpc"),
        "db.demo": Service("db", "demo", protocol="tcp"),
        "vault.demo": Service("vault", "demo", protocol="tcp", gateway_mode="passthrough"),
        "nowhere.demo": Service("nowhere", "demo", protocol="http"),
        "closed.demo": Service("closed", "demo", protocol="http"),
        "garbage.demo": Service("garbage", "demo", protocol="http"),
        "reset.demo": Service("reset", "demo", protocol="http2"),
    }
    endpoints = [
        Endpoint("echo.demo", "west-1", host, ports["http"], WEST, id="west-1/echo"),
        Endpoint("h2echo.demo", "west-1", host, ports["http"], WEST, id="west-1/h2echo"),
        Endpoint("greeter.demo", "west-1", host, ports["grpc"], WEST),
        Endpoint("db.demo", "west-1", host, ports["tcp"], WEST),
        Endpoint("vault.demo", "west-1", host, ports["tls"], WEST),
        Endpoint("closed.demo", "west-1", host, ports["closed"], WEST),
        Endpoint("garbage.demo", "west-1", host, ports["garbage"], WEST),
        Endpoint("reset.demo", "west-1", host, ports["reset"], WEST),
    ]
    exports = {key: Export(key, ["*"]) for key in services}
    west = Catalog(cluster="west-1", revision=1, services=services,
                   endpoints={e.id: e for e in endpoints}, exports=exports)
    peer = Peer("west-1", "eu-west", ("eu-west-1a",), gateway=west_gateway)
    east = Catalog(cluster="east-1", revision=1, services=services,
                   endpoints={e.id: e for e in endpoints}, exports={}, peers={"west-1": peer})
    return east, west


def gateway_config(pki: TestPki, cluster: str, locality: Locality, host: str = "127.0.0.1",
                   **kwargs: Any) -> GatewayConfig:
    settings = dict(
        cluster=cluster,
        locality=locality,
        eastwest=f"{host}:0",
        outbound=f"{host}:0",
        admin=f"{host}:0",
        identity=pki.identity(cluster),
        bundle=pki.bundle,
        connect_timeout_s=2.0,
        request_timeout_s=5.0,
        idle_timeout_s=10.0,
        header_timeout_s=2.0,
        handshake_timeout_s=2.0,
        drain_timeout_s=2.0,
    )
    settings.update(kwargs)
    return GatewayConfig(**settings)


@asynccontextmanager
async def open_topology(pki: TestPki, *, east_settings: dict | None = None,
                        west_settings: dict | None = None, make_picker_factory: Any = None) -> AsyncIterator[Topology]:
    """East-1 and west-1 gateways over test upstreams; `make_picker_factory()` (e.g. a `BalancerSet`
    with quiet policies) gives each gateway its own picker factory."""
    make = make_picker_factory or (lambda: None)
    host = "127.0.0.1"
    async with trio.open_nursery() as nursery:
        grpc_server, grpc_port = start_grpc_server(host)
        try:
            ports = {
                "http": await serve_hypercorn(nursery, host),
                "grpc": grpc_port,
                "tcp": await serve_tcp_echo(nursery, host),
                "tls": await serve_tcp_echo(
                    nursery, host, server_context(pki.identity("west-1", "vault"), pki.bundle,
                                                  require_client_cert=False)),
                "closed": free_port(host),
                "garbage": await serve_garbage(nursery, host),
                "reset": await serve_resetting_h2(nursery, host),
            }
            west_config = gateway_config(pki, "west-1", WEST, **(west_settings or {}))
            west_source = StaticCatalogSource(catalogs("127.0.0.1:9", ports, host)[1])
            west = await nursery.start(
                lambda task_status: serve_gateway(west_config, west_source, picker_factory=make(),
                                                  task_status=task_status))
            west_host, west_port = west.addresses["eastwest"]
            east_catalog, west_catalog = catalogs(f"{west_host}:{west_port}", ports, host)
            ports["db_outbound"] = free_port(host)
            ports["vault_outbound"] = free_port(host)
            tcp_ports = {ports["db_outbound"]: "db.demo", ports["vault_outbound"]: "vault.demo"}
            east_config = gateway_config(pki, "east-1", EAST, tcp_ports=tcp_ports, **(east_settings or {}))
            east = await nursery.start(
                lambda task_status: serve_gateway(east_config, StaticCatalogSource(east_catalog),
                                                  picker_factory=make(), task_status=task_status))
            yield Topology(pki, east, west, east_catalog, west_catalog, ports)
            nursery.cancel_scope.cancel()
        finally:
            grpc_server.stop(None)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def settled_fds() -> int:
    """The open fd count once the collector has run, so that a socket an earlier test left to it cannot
    close in the middle of a test (hiding a leak, or failing an exact comparison)."""
    gc.collect()
    return open_fds()


def blocking_socket(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=5)


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value))


def metric_value(gateway: Gateway, name: str, **labels: str) -> float:
    """The sum of samples named `name` whose labels include `labels`."""
    total = 0.0
    for family in gateway.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def eventually(predicate: Any, timeout_s: float = 5.0) -> None:
    """Poll `predicate` until it is true, failing after `timeout_s` (no fixed sleeps)."""
    with trio.fail_after(timeout_s):
        while True:
            if predicate():
                return
            await trio.sleep(0.01)


class TopologyThread:
    """A topology served by trio in a background thread, for synchronous tests (Hypothesis runs
    many examples against one topology); `call(fn)` runs `fn` in the topology's trio thread."""

    def __init__(self, pki: TestPki, **kwargs: Any) -> None:
        import threading

        self.pki = pki
        self.kwargs = kwargs
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="gateway-topology", daemon=True)
        self.topology: Topology | None = None
        self.error: BaseException | None = None

    def _run(self) -> None:
        async def main() -> None:
            self.token = trio.lowlevel.current_trio_token()
            with trio.CancelScope() as scope:
                self.scope = scope
                async with open_topology(self.pki, **self.kwargs) as topology:
                    self.topology = topology
                    self.ready.set()
                    await trio.sleep_forever()

        try:
            trio.run(main)
        except BaseException as exc:  # reported to the test thread
            self.error = exc
        finally:
            self.ready.set()

    def __enter__(self) -> TopologyThread:
        self.thread.start()
        self.ready.wait(30)
        if self.topology is None:
            raise RuntimeError(f"topology did not start: {self.error!r}")
        return self

    def __exit__(self, *exc_info: Any) -> None:
        trio.from_thread.run_sync(self.scope.cancel, trio_token=self.token)
        self.thread.join(30)

    def call(self, fn: Any) -> Any:
        return trio.from_thread.run_sync(fn, trio_token=self.token)

    def tasks_living(self) -> int:
        return self.call(lambda: trio.lowlevel.current_statistics().tasks_living)

    def settle(self, fds: int, tasks: int, timeout_s: float = 5.0) -> tuple[int, int]:
        """Wait (polling) until the fd and task counts return to the given baseline; return the last seen."""
        import time

        deadline = time.monotonic() + timeout_s
        while True:
            now = (open_fds(), self.tasks_living())
            if now[0] <= fds and now[1] <= tasks or time.monotonic() > deadline:
                return now
            time.sleep(0.02)


class RawH2Client:
    """A bare HTTP/2 (h2c) client on the h2 library, which keeps reading after GOAWAY as RFC 9113
    allows (httpx fails every open stream on GOAWAY, so it cannot show a graceful drain)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        import h2.config
        import h2.connection

        self.stream = stream
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.goaway: Any = None

    @classmethod
    async def connect(cls, address: tuple[str, int]) -> RawH2Client:
        client = cls(await trio.open_tcp_stream(*address))
        client.conn.initiate_connection()
        await client.stream.send_all(client.conn.data_to_send())
        return client

    async def start(self, authority: str, path: str) -> int:
        """Send a GET's headers only; returns the stream id."""
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, [(":method", "GET"), (":scheme", "http"), (":authority", authority),
                                           (":path", path)], end_stream=True)
        await self.stream.send_all(self.conn.data_to_send())
        return stream_id

    async def reset(self, stream_id: int) -> None:
        self.conn.reset_stream(stream_id)
        await self.stream.send_all(self.conn.data_to_send())

    async def get(self, authority: str, path: str) -> tuple[int, bytes]:
        import h2.connection
        import h2.events

        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, [(":method", "GET"), (":scheme", "http"), (":authority", authority),
                                           (":path", path)], end_stream=True)
        await self.stream.send_all(self.conn.data_to_send())
        status, body = 0, b""
        while True:
            data = await self.stream.receive_some(65536)
            if not data:
                raise ConnectionError("connection closed before the response ended")
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                    body += event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    self.goaway = event
                    # h2 closes its state machine on any GOAWAY; keep reading the open stream.
                    self.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                    await self.stream.send_all(self.conn.data_to_send())
                    return status, body
            await self.stream.send_all(self.conn.data_to_send())
