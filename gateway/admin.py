"""The admin listener (loopback only): `/metrics`, `/ready`, `/healthz`, `/catalog`.

A tiny HTTP/1.1 server over h11: one request per connection, GET only. `/ready` is 200 once the
first catalog is in force and every listener is bound, and 503 while draining; `/catalog` is the
JSON of the catalog the gateway currently believes (`registry.codec` shape) with its state.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import h11
import trio

READ_SIZE = 16384


async def serve_admin_connection(stream: trio.abc.Stream, routes: dict[bytes, Callable[[], tuple[int, bytes, bytes]]],
                                 *, timeout_s: float = 5.0) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16384)
    with trio.move_on_after(timeout_s):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(READ_SIZE)
                if not data:
                    return
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                break
            return
        path = event.target.split(b"?", 1)[0]
        handler = routes.get(path)
        if event.method not in (b"GET", b"HEAD"):
            status, ctype, body = 405, b"text/plain", b"method not allowed\n"
        elif handler is None:
            status, ctype, body = 404, b"text/plain", b"not found: try /metrics /ready /healthz /catalog\n"
        else:
            status, ctype, body = handler()
        headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        data = conn.send(h11.Response(status_code=status, headers=headers))
        if event.method != b"HEAD":
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)


def json_body(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True).encode() + b"\n"
