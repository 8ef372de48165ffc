"""The `h2-floor` peer of `isthmus bench gateway`: the gateway's own HTTP/2 plumbing with nothing else.

A mutual-TLS HTTP/2 listener built from exactly the pieces `isthmus gateway` runs on its east-west
listener (`gateway.net` sockets and TLS, `gateway.h2conn.H2Conn` with its tuned h2, trio, one task
per stream) and one pooled h2c connection to the upstream, with a handler that only forwards: no
routing table, policy, balancer, retries, timeouts, metrics, access log or trace headers. What it
costs per request is the floor under any L7 gateway built on trio + h2 here; the bench reports it
beside `isthmus-l7` so the gap between the two is the gateway's features and the gap under it is
the pure-Python HTTP/2 ceiling.

It forwards what h2load sends (GET without a body) and answers anything else, or an upstream that
is gone, with 502. Not part of the product: run by the benchmark only.

    python benchmarks/h2floor.py --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT --pki DIR --cluster NAME

It presents the cluster's `gateway` identity from the mesh PKI at `--pki`, through the same TLS
context the gateway builds (`certs.tls.server_context`), offering ALPN `h2` only.
"""

from __future__ import annotations

import argparse
import ssl
import sys

import trio

from certs.errors import CertsError
from certs.store import load_bundle, load_identity
from certs.tls import server_context
from gateway.errors import GatewayError
from gateway.h2conn import H2Conn, H2Stream, StreamReset
from gateway.net import SocketIO, connect, open_listener, set_nodelay, tls_stream
from registry.errors import ValidationError
from registry.model import parse_host_port

BAD_GATEWAY = [(b":status", b"502"), (b"content-length", b"0")]


class Floor:
    def __init__(self, upstream: H2Conn) -> None:
        self.upstream = upstream

    async def forward(self, conn: H2Conn, stream: H2Stream) -> None:
        head = dict(await stream.receive_headers())
        if not stream.ended:  # a request body: not what this floor forwards
            conn.send_headers(stream.id, BAD_GATEWAY, end_stream=True)
            return
        try:
            out = await self.upstream.open_stream(
                [(b":method", head[b":method"]), (b":scheme", b"http"), (b":authority", head[b":authority"]),
                 (b":path", head[b":path"])],
                end_stream=True,
            )
        except StreamReset:
            conn.send_headers(stream.id, BAD_GATEWAY, end_stream=True)
            return
        try:
            response = await out.receive_headers()
            conn.queue_headers(stream.id, [(n, v) for n, v in response if n[:1] != b":" or n == b":status"])
            while (chunk := await out.receive_available()) is not None:
                await conn.send_data(stream.id, chunk, end_stream=out.finished)
                if out.finished:
                    return
            await conn.send_data(stream.id, b"", end_stream=True)
        except StreamReset:
            conn.reset(stream.id)
        finally:
            self.upstream.forget(out.id)


async def serve(listen: tuple[str, int], upstream: tuple[str, int], context: ssl.SSLContext) -> None:
    up = H2Conn(await connect(*upstream, timeout_s=5.0), client_side=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(up.run)
        floor = Floor(up)
        listener = await open_listener(*listen)

        async def one(tcp: trio.SocketStream) -> None:
            set_nodelay(tcp)
            tls = tls_stream(SocketIO(tcp), context, server_side=True)
            try:
                await tls.do_handshake()
                await H2Conn(tls, client_side=False, on_stream=floor.forward).run()
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
                pass  # a readiness probe, or a client gone: the others go on

        await trio.serve_listeners(one, [listener], handler_nursery=nursery)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--upstream", required=True, metavar="HOST:PORT", help="the h2c upstream")
    parser.add_argument("--pki", required=True, metavar="DIR", help="the mesh PKI directory")
    parser.add_argument("--cluster", required=True, help="whose gateway identity to present")
    args = parser.parse_args(argv)
    try:
        listen = parse_host_port("--listen", args.listen)
        upstream = parse_host_port("--upstream", args.upstream)
        context = server_context(load_identity(args.pki, args.cluster, "gateway"), load_bundle(args.pki),
                                 alpn=("h2",))
        trio.run(serve, listen, upstream, context)
    except KeyboardInterrupt:
        return 0
    except (CertsError, GatewayError, ValidationError, OSError, ssl.SSLError) as exc:
        print(f"h2floor: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
