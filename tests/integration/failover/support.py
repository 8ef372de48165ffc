"""Misbehaving endpoints and one- or two-gateway topologies on loopback for the failover tests.

`serve_resetting` reads each request (head and body) and then resets the connection without an
answer, as an endpoint killed mid-request does; `serve_silent` accepts and reads but never
answers (a blackholed endpoint). Healthy endpoints are `tests.integration.gateway.support`'s
hypercorn echo application.
"""

from __future__ import annotations

import functools
import socket
import struct

import trio

from gateway.catalog_source import StaticCatalogSource
from gateway.lb.balancer import BalancerSet
from gateway.server import serve_gateway
from registry.model import Catalog, Endpoint, Export, Locality, Service
from tests.integration.gateway.support import gateway_config

EAST_A = Locality("us-east", "us-east-1a")
EAST_B = Locality("us-east", "us-east-1b")


async def _read_request(stream: trio.SocketStream) -> int:
    """Read one request head and its content-length body; return the body bytes read."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return 0
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    got = len(body)
    while got < length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        got += len(chunk)
    return got


async def serve_resetting(nursery: trio.Nursery, host: str, seen: list[int]) -> int:
    """An endpoint that takes each request, body included, then resets the connection (RST)."""

    async def handler(stream: trio.SocketStream) -> None:
        seen.append(await _read_request(stream))
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()

    listeners = await trio.open_tcp_listeners(0, host=host)
    nursery.start_soon(trio.serve_listeners, handler, listeners)
    return listeners[0].socket.getsockname()[1]


async def serve_silent(nursery: trio.Nursery, host: str) -> int:
    """An endpoint that accepts and reads but never answers."""

    async def handler(stream: trio.SocketStream) -> None:
        while await stream.receive_some(65536):
            pass

    listeners = await trio.open_tcp_listeners(0, host=host)
    nursery.start_soon(trio.serve_listeners, handler, listeners)
    return listeners[0].socket.getsockname()[1]


def local_catalog(cluster: str, endpoints: list[Endpoint], **extra: object) -> Catalog:
    services = {"echo.demo": Service("echo", "demo", protocol="http")}
    return Catalog(cluster=cluster, revision=1, services=services, endpoints={e.id: e for e in endpoints},
                   exports={"echo.demo": Export("echo.demo", ["*"])}, **extra)


def bad_and_good(bad_port: int, good_port: int, bad_name: str, host: str = "127.0.0.1") -> Catalog:
    """east-1's echo.demo with a misbehaving endpoint (`east-1/<bad_name>`) in zone a and a good one in zone b."""
    return local_catalog("east-1", [
        Endpoint("echo.demo", "east-1", host, bad_port, EAST_A, id=f"east-1/{bad_name}"),
        Endpoint("echo.demo", "east-1", host, good_port, EAST_B, id="east-1/good"),
    ])


async def start_gateway(nursery: trio.Nursery, pki: object, catalog: Catalog, locality: Locality,
                        balancers: BalancerSet, host: str = "127.0.0.1", **settings: object):
    config = gateway_config(pki, catalog.cluster, locality, host, **settings)
    run = functools.partial(serve_gateway, picker_factory=balancers)
    return await nursery.start(run, config, StaticCatalogSource(catalog))
