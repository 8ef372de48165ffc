"""A proxied request leaves no reference cycles in the gateways: its objects are freed by reference
counting the moment it ends. The gateway process raises the cyclic collector's first threshold
(`gateway.runtime`) on that promise; a cycle per request (a closure the request's state keeps, a
responder and the state pointing at each other) would be freed late, in bulk, by collections that
also walk every request in flight — which cost 8-10 % of the CPU per request before it was fixed."""

from __future__ import annotations

import collections
import gc
import os

import httpx

# Objects of a connection, not of a request: an HTTP/2 connection's h2 state machine holds its own
# bound methods, and a connection that fails keeps its transport in the exception's traceback. Health
# checks and peer probes open and close connections in the background while the test runs.
CONNECTION_LEVEL = frozenset({"ForwardingH2Connection", "FastFrameBuffer", "ForwardingEncoder", "ForwardingDecoder",
                              "H2Conn", "SocketIO", "PrefixedStream", "EagerLock", "H1Upstream"})


def request_objects(objects: list[object]) -> collections.Counter[str]:
    """The objects of the gateway's own per-request classes among `objects`, counted by class."""
    return collections.Counter(
        type(o).__qualname__ for o in objects
        if type(o).__module__.startswith("gateway.") and type(o).__qualname__ not in CONNECTION_LEVEL
    )


async def some_traffic(h2c: httpx.AsyncClient, h1: httpx.AsyncClient) -> None:
    """Requests of every common shape through east-1's outbound and west-1's east-west listener."""
    for _ in range(3):
        assert (await h2c.get("/headers", headers={"host": "echo.demo"})).status_code == 200
        body = os.urandom(100_000)
        assert (await h2c.post("/echo", headers={"host": "echo.demo"}, content=body)).content == body
        assert (await h1.get("/headers", headers={"host": "echo.demo"})).status_code == 200
        assert (await h1.post("/echo", headers={"host": "echo.demo"}, content=b"x" * 5000)).content == b"x" * 5000
        assert (await h1.get("/", headers={"host": "nowhere.demo"})).status_code == 503


async def test_proxied_requests_leave_no_gateway_objects_in_reference_cycles(topology):
    # The clients' connections stay open throughout (see CONNECTION_LEVEL).
    async with httpx.AsyncClient(base_url=topology.outbound, http1=False, http2=True, timeout=20) as h2c, \
            httpx.AsyncClient(base_url=topology.outbound, timeout=20) as h1:
        await some_traffic(h2c, h1)  # pools and caches warm: what stays from here on is per request
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds unreachable is kept in gc.garbage
        try:
            await some_traffic(h2c, h1)
            gc.collect()
            cyclic = request_objects(gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    assert not cyclic, f"gateway objects freed only by the cyclic collector: {dict(cyclic)}"
