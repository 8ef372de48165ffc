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

    python benchmarks/h2floor.py --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT \\
        --cert chain.pem --key key.pem --ca bundle.pem
"""

from __future__ import annotations

import argparse
import ssl
import sys

import trio

from gateway.h2conn import H2Conn, H2Stream, StreamReset
from gateway.net import SocketIO, connect, open_listener, set_nodelay, tls_stream

BAD_GATEWAY = [(b":status", b"502"), (b"content-length", b"0")]


def server_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    context.load_verify_locations(ca)
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    return context


class Floor:
    def __init__(self, upstream: H2Conn) -> None:
        self.upstream = upstream

    async def forward(self, conn: H2Conn, stream: H2Stream) -> None:
        head = dict(await stream.receive_headers())
        if not stream.ended or self.upstream.closed:
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
    async with trio.open_nursery() as nursery:
        up = H2Conn(await connect(*upstream, timeout_s=5.0), client_side=True)
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


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=_address, required=True)
    parser.add_argument("--upstream", type=_address, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ca", required=True)
    args = parser.parse_args(argv)
    try:
        context = server_context(args.cert, args.key, args.ca)
        trio.run(serve, args.listen, args.upstream, context)
    except KeyboardInterrupt:
        return 0
    except (OSError, ssl.SSLError) as exc:
        print(f"h2floor: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
