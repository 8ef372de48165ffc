"""The demo's sample services: an HTTP service that answers with its cluster and zone, and a gRPC greeter.

`serve_echo` is a small HTTP/1.1 server (trio + h11, keep-alive): every response is JSON naming the
service, cluster and zone that answered, plus the request's method, path and the `x-isthmus-*` and
`traceparent` headers it arrived with, so a user sees where a request went. `GET /healthz` answers 200.
Drills brown an endpoint out without restarting it: SIGUSR1 makes every answer `slow_ms` late, SIGUSR2
makes it prompt again.
The greeter is a gRPC service (`demo.Greeter/SayHello`, unary, and `demo.Greeter/SayHellos`, server
streaming) that needs no generated code: requests and replies are UTF-8 bytes.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from functools import partial

import attrs
import h11
import trio

MAX_BODY_BYTES = 1 << 20


@attrs.frozen
class Identity:
    service: str
    cluster: str
    zone: str

    def describe(self) -> dict[str, str]:
        return {"service": self.service, "cluster": self.cluster, "zone": self.zone}


@attrs.define
class Brownout:
    """Whether answers are late, and by how much (toggled by signals from a drill)."""

    slow_ms: float = 300.0
    active: bool = False


def echo_response(identity: Identity, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """The JSON body the echo service answers with (pure)."""
    seen = {
        k.decode("latin-1"): v.decode("latin-1")
        for k, v in headers
        if k.startswith(b"x-isthmus-") or k in (b"traceparent", b"x-request-id", b"host")
    }
    return (
        json.dumps({**identity.describe(), "method": method, "path": target, "headers": seen, "body_bytes": len(body)})
        + "\n"
    ).encode()


async def _handle_http(identity: Identity, brownout: Brownout, stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            request = None
            body = bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    with trio.move_on_after(30):
                        data = await stream.receive_some(65536)
                        conn.receive_data(data)
                        continue
                    return  # idle
                if isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > MAX_BODY_BYTES:
                        raise h11.RemoteProtocolError("body too large")
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    return
            assert request is not None
            if brownout.active:
                await trio.sleep(brownout.slow_ms / 1000)
            target = request.target.decode("latin-1")
            if target == "/healthz":
                payload = b"ok\n"
            else:
                payload = echo_response(identity, request.method.decode(), target, list(request.headers), bytes(body))
            response = h11.Response(
                status_code=200,
                headers=[
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"x-demo-cluster", identity.cluster.encode()),
                    (b"x-demo-zone", identity.zone.encode()),
                ],
            )
            await stream.send_all(conn.send(response) + conn.send(h11.Data(data=payload)) + conn.send(h11.EndOfMessage()))
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        return
    finally:
        await stream.aclose()


async def serve_echo(
    identity: Identity, host: str, port: int, brownout: Brownout | None = None, *, task_status=trio.TASK_STATUS_IGNORED
) -> None:
    """Serve the echo service on `host:port` until cancelled (SIGUSR1/SIGUSR2 toggle the brownout)."""
    brownout = brownout or Brownout()
    listeners = await trio.open_tcp_listeners(port, host=host)
    async with trio.open_nursery() as nursery:
        if threading.current_thread() is threading.main_thread():
            nursery.start_soon(_follow_brownout_signals, brownout)
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(partial(_handle_http, identity, brownout), listeners)


async def _follow_brownout_signals(brownout: Brownout) -> None:
    import signal

    with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGUSR2) as signals:
        async for signum in signals:
            brownout.active = signum == signal.SIGUSR1


def start_greeter(identity: Identity, host: str, port: int) -> Callable[[], None]:
    """Start the gRPC greeter in grpcio's own threads; returns a function that stops it."""
    from concurrent import futures

    import grpc

    def say_hello(request: bytes, context) -> bytes:
        return f"hello {request.decode() or 'world'} from {identity.cluster}/{identity.zone}".encode()

    def say_hellos(request: bytes, context):
        for i in range(3):
            yield f"hello #{i} {request.decode() or 'world'} from {identity.cluster}/{identity.zone}".encode()

    handler = grpc.method_handlers_generic_handler(
        "demo.Greeter",
        {
            "SayHello": grpc.unary_unary_rpc_method_handler(say_hello),
            "SayHellos": grpc.unary_stream_rpc_method_handler(say_hellos),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"cannot bind {host}:{port} for the gRPC greeter")
    server.start()
    stopped = threading.Event()

    def stop() -> None:
        if not stopped.is_set():
            stopped.set()
            server.stop(grace=1).wait()

    return stop
