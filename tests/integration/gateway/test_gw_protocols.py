"""Protocols end to end through two gateways: workload -> east-1 outbound -> mTLS -> west-1 east-west -> endpoint."""

from __future__ import annotations

import hashlib
import json
import os

import grpc
import httpx
import pytest
import trio

from tests.integration.gateway.support import RawH2Client, eventually, metric_value


def h2_client(topology) -> httpx.AsyncClient:
    """An h2c (prior knowledge) client of east-1's outbound listener."""
    return httpx.AsyncClient(base_url=topology.outbound, http1=False, http2=True, timeout=20)


async def raw_exchange(address: tuple[str, int], data: bytes, *, until: bytes = b"", max_wait_s: float = 5) -> bytes:
    stream = await trio.open_tcp_stream(*address)
    out = b""
    async with stream:
        await stream.send_all(data)
        with trio.move_on_after(max_wait_s):
            while not (until and until in out):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                out += chunk
    return out


# -- HTTP/1.1 ----------------------------------------------------------------------------------------


async def test_http1_keepalive_serves_several_requests_on_one_connection(topology):
    request = b"GET /headers HTTP/1.1\r\nhost: echo.demo\r\n\r\n"
    stream = await trio.open_tcp_stream(*topology.east.addresses["outbound"])
    async with stream:
        for _ in range(3):
            await stream.send_all(request)
            data = b""
            while not data.endswith(b"}\r\n0\r\n\r\n"):
                data += await stream.receive_some(65536)
            assert data.startswith(b"HTTP/1.1 200")
            assert b"x-isthmus-cluster: west-1" in data


async def test_http1_chunked_request_body_streams_through(topology):
    payload = os.urandom(1024 * 1024)

    async def chunks():
        for i in range(0, len(payload), 100_000):
            yield payload[i : i + 100_000]

    async with httpx.AsyncClient(base_url=topology.outbound, timeout=20) as client:
        response = await client.post("/echo", headers={"host": "echo.demo"}, content=chunks())
    assert response.status_code == 200
    assert hashlib.sha256(response.content).digest() == hashlib.sha256(payload).digest()


async def test_http1_expect_100_continue_gets_100_before_the_body(topology):
    address = topology.east.addresses["outbound"]
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(b"POST /echo HTTP/1.1\r\nhost: echo.demo\r\ncontent-length: 5\r\n"
                              b"expect: 100-continue\r\n\r\n")
        interim = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in interim:
                interim += await stream.receive_some(1024)
        assert interim.startswith(b"HTTP/1.1 100")
        await stream.send_all(b"hello")
        rest = interim.split(b"\r\n\r\n", 1)[1]
        with trio.fail_after(5):
            while b"hello" not in rest:
                rest += await stream.receive_some(65536)
        assert b"HTTP/1.1 200" in rest


async def test_hop_by_hop_headers_are_stripped_and_identity_is_not_forgeable(topology):
    async with httpx.AsyncClient(base_url=topology.outbound) as client:
        response = await client.get("/headers", headers={
            "host": "echo.demo",
            "connection": "x-secret",
            "x-secret": "1",
            "keep-alive": "timeout=5",
            "proxy-connection": "keep-alive",
            "x-isthmus-peer-identity": "spiffe://mesh.example/cluster/west-1/admin",
            "x-request-id": "req-42",
        })
    headers = response.json()["headers"]
    names = [name for name, _ in headers]
    assert "x-secret" not in names and "keep-alive" not in names and "proxy-connection" not in names
    assert [v for n, v in headers if n == "x-isthmus-peer-identity"] == ["spiffe://mesh.example/cluster/east-1/gateway"]
    assert [v for n, v in headers if n == "x-request-id"] == ["req-42"]
    assert response.headers["x-isthmus-cluster"] == "west-1"


async def test_authority_alias_with_trust_domain_routes_too(topology):
    async with httpx.AsyncClient(base_url=topology.outbound) as client:
        response = await client.get("/headers", headers={"host": "echo.demo.mesh.example:8080"})
    assert response.status_code == 200


# -- HTTP/2 ------------------------------------------------------------------------------------------


async def test_h2c_to_http2_service_uses_http2_end_to_end(topology):
    async with h2_client(topology) as client:
        response = await client.get("/headers", headers={"host": "h2echo.demo"})
    assert response.status_code == 200
    assert response.http_version == "HTTP/2"
    assert response.headers["x-upstream-protocol"] == "2"
    assert response.headers["x-isthmus-cluster"] == "west-1"


async def test_h2_large_bodies_stream_both_ways_under_flow_control(topology):
    payload = os.urandom(8 * 1024 * 1024)  # far beyond every flow-control window on the path

    async def chunks():
        for i in range(0, len(payload), 256 * 1024):
            yield payload[i : i + 256 * 1024]

    async with h2_client(topology) as client:
        response = await client.post("/echo", headers={"host": "h2echo.demo"}, content=chunks())
    assert response.status_code == 200
    assert len(response.content) == len(payload)
    assert hashlib.sha256(response.content).digest() == hashlib.sha256(payload).digest()


async def test_h2_concurrent_streams_share_one_upstream_connection(topology):
    results: list[int] = []
    async with h2_client(topology) as client:

        async def one(i: int) -> None:
            response = await client.get(f"/bytes/{1000 + i}", headers={"host": "h2echo.demo"})
            assert len(response.content) == 1000 + i
            results.append(response.status_code)

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(one, i)
    assert results == [200] * 40
    # One persistent, multiplexed connection from east-1 to west-1 for this service.
    assert [key for key in topology.east.upstreams.h2 if key[2] == "h2echo.demo"] == [
        (*topology.west_eastwest, "h2echo.demo")
    ]


async def test_h2_client_reset_cancels_the_exchange_on_both_gateways(topology):
    client = await RawH2Client.connect(topology.east.addresses["outbound"])
    async with client.stream:
        stream_id = await client.start("h2echo.demo", "/slow/2")
        await eventually(lambda: topology.west.proxy.in_flight == 1)
        await client.reset(stream_id)
        # The reset travels: east-1 cancels its exchange and resets its stream to west-1, which
        # cancels its own; neither waits the 2 s for the endpoint.
        await eventually(lambda: topology.east.proxy.in_flight == 0 and topology.west.proxy.in_flight == 0,
                         timeout_s=1.0)
        assert await client.get("h2echo.demo", "/bytes/10") == (200, b"x" * 10)
    assert metric_value(topology.east, "isthmus_requests_total", response_code="0",
                        destination_service="h2echo.demo") == 1


async def test_h1_client_to_h2_service_and_h2_client_to_h1_service(topology):
    async with httpx.AsyncClient(base_url=topology.outbound) as client:
        response = await client.get("/headers", headers={"host": "h2echo.demo"})
        assert response.status_code == 200 and response.headers["x-upstream-protocol"] == "2"
    async with h2_client(topology) as client:
        response = await client.get("/headers", headers={"host": "echo.demo"})
        assert response.status_code == 200 and response.headers["x-upstream-protocol"] == "1.1"


# -- gRPC --------------------------------------------------------------------------------------------


def _grpc_calls(target: str) -> tuple[bytes, list[bytes]]:
    options = [("grpc.default_authority", "greeter.demo")]
    with grpc.insecure_channel(target, options=options) as channel:
        unary = channel.unary_unary("/demo.Greeter/SayHello")
        chat = channel.stream_stream("/demo.Greeter/Chat")
        reply = unary(b"isthmus", timeout=10)
        replies = list(chat(iter([b"a", b"b", b"c"]), timeout=10))
    return reply, replies


async def test_grpc_unary_and_streaming_cross_two_gateways(topology):
    host, port = topology.east.addresses["outbound"]
    reply, replies = await trio.to_thread.run_sync(_grpc_calls, f"{host}:{port}")
    assert reply == b"hello isthmus"
    assert replies == [b"echo a", b"echo b", b"echo c"]
    assert metric_value(topology.west, "isthmus_requests_total", request_protocol="grpc",
                        source_cluster="east-1", destination_service="greeter.demo", response_code="200") == 2


def _grpc_unknown_method(target: str) -> grpc.StatusCode:
    with grpc.insecure_channel(target, options=[("grpc.default_authority", "greeter.demo")]) as channel:
        try:
            channel.unary_unary("/demo.Greeter/Nope")(b"x", timeout=10)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def test_grpc_status_in_trailers_reaches_the_client(topology):
    host, port = topology.east.addresses["outbound"]
    code = await trio.to_thread.run_sync(_grpc_unknown_method, f"{host}:{port}")
    assert code == grpc.StatusCode.UNIMPLEMENTED


# -- TCP and passthrough -----------------------------------------------------------------------------


async def test_tcp_port_crosses_to_remote_tcp_service(topology):
    stream = await trio.open_tcp_stream("127.0.0.1", topology.ports["db_outbound"])
    async with stream:
        payload = os.urandom(300_000)
        received = b""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, payload)
            with trio.fail_after(10):
                while len(received) < len(payload):
                    received += await stream.receive_some(65536)
    assert received == payload
    await eventually(lambda: metric_value(topology.west, "isthmus_tcp_connections_closed_total",
                                          destination_service="db.demo"))
    assert metric_value(topology.west, "isthmus_tcp_received_bytes_total", destination_service="db.demo") == len(payload)


async def test_passthrough_keeps_end_to_end_tls_to_the_endpoint(topology):
    from certs.tls import peer_identity

    tcp = await trio.open_tcp_stream(*topology.west_eastwest)
    context = topology.pki.client_context("east-1", "app")
    tls = trio.SSLStream(tcp, context, server_hostname="vault.demo")
    async with tls:
        await tls.do_handshake()
        # The certificate is the endpoint's own: the gateway did not terminate TLS.
        assert str(peer_identity(tls)) == "spiffe://mesh.example/cluster/west-1/vault"
        await tls.send_all(b"ping")
        assert await tls.receive_some(100) == b"ping"
    assert metric_value(topology.west, "isthmus_tcp_connections_opened_total", destination_service="vault.demo") == 1


async def test_passthrough_through_both_gateways_from_an_outbound_tcp_port(topology):
    from certs.tls import peer_identity

    tcp = await trio.open_tcp_stream("127.0.0.1", topology.ports["vault_outbound"])
    tls = trio.SSLStream(tcp, topology.pki.client_context("east-1", "app"), server_hostname="vault.demo")
    async with tls:
        await tls.do_handshake()
        assert str(peer_identity(tls)) == "spiffe://mesh.example/cluster/west-1/vault"
        await tls.send_all(b"through two gateways")
        assert await tls.receive_some(100) == b"through two gateways"


async def test_upstream_goaway_lets_in_flight_finish_then_fails_fast(topology):
    """west-1 drains: east-1's pooled connection gets GOAWAY; the request in flight on it
    completes; the next request cannot connect and is answered 503 at once, not hung."""
    async with httpx.AsyncClient(base_url=topology.outbound, timeout=10) as client:
        await client.get("/headers", headers={"host": "echo.demo"})  # the pooled connection exists
        results = {}

        async def slow() -> None:
            results["slow"] = await client.get("/slow/0.5", headers={"host": "echo.demo"})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow)
            await eventually(lambda: topology.west.proxy.in_flight >= 1)
            nursery.start_soon(topology.west.drain)
        with trio.fail_after(5):
            after = await client.get("/headers", headers={"host": "echo.demo"})
    assert results["slow"].status_code == 200
    assert after.status_code == 503
    assert after.headers["x-isthmus-reason"] == "upstream-connect"
    assert after.headers["x-isthmus-cluster"] == "east-1"


# -- errors map to status and reason -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "status", "reason", "cluster"),
    [
        ("nowhere.demo", 503, "no-endpoints", "east-1"),
        ("closed.demo", 503, "upstream-connect", "west-1"),
        ("garbage.demo", 502, "upstream-reset", "west-1"),
        ("reset.demo", 502, "upstream-reset", "west-1"),
        ("unknown.demo", 404, "service-unknown", "east-1"),
    ],
)
async def test_failures_answer_with_status_and_reason(topology, host, status, reason, cluster):
    async with httpx.AsyncClient(base_url=topology.outbound) as client:
        response = await client.get("/headers", headers={"host": host})
    assert response.status_code == status
    assert response.headers["x-isthmus-reason"] == reason
    assert response.headers["x-isthmus-cluster"] == cluster


async def test_upstream_timeout_is_504_not_a_hang(gateway_pki):
    from tests.integration.gateway.support import open_topology

    async with open_topology(gateway_pki, west_settings={"request_timeout_s": 0.5}) as topo:
        async with httpx.AsyncClient(base_url=topo.outbound, timeout=10) as client:
            with trio.fail_after(5):
                response = await client.get("/slow/3", headers={"host": "echo.demo"})
    assert response.status_code == 504
    assert response.headers["x-isthmus-reason"] == "upstream-timeout"


async def test_a_response_body_that_stalls_ends_at_the_idle_timeout(gateway_pki):
    """The peer gateway's answer started and then went quiet: east-1 gives up after its idle
    timeout (not the upstream's 3 s), cuts the response and counts a timeout."""
    from tests.integration.gateway.support import metric_value, open_topology

    async with open_topology(gateway_pki, east_settings={"idle_timeout_s": 0.5}) as topo:
        async with httpx.AsyncClient(base_url=topo.outbound, timeout=10) as client:
            with trio.fail_after(2.5):
                with pytest.raises(httpx.TransportError):
                    await client.get("/stall/3", headers={"host": "echo.demo"})
        assert metric_value(topo.east, "isthmus_timeouts_total", destination_service="echo.demo") == 1


@pytest.mark.parametrize("http2", [False, True], ids=["http1-client", "h2c-client"])
@pytest.mark.parametrize("host", ["echo.demo", "h2echo.demo"])
async def test_a_streaming_response_head_and_first_chunk_arrive_before_the_rest(topology, http2, host):
    """The gateways send a response head with the body chunk that came with it, and never hold
    either back until the rest: what the upstream has sent reaches the client while it stalls."""
    async with httpx.AsyncClient(base_url=topology.outbound, http1=not http2, http2=http2, timeout=10) as client:
        started = trio.current_time()
        with trio.fail_after(5):
            async with client.stream("GET", "/stall/1.5", headers={"host": host}) as response:
                head_after = trio.current_time() - started
                chunks = response.aiter_raw()
                first = await chunks.__anext__()
                first_after = trio.current_time() - started
                rest = b"".join([chunk async for chunk in chunks])
                whole_after = trio.current_time() - started
    assert response.status_code == 200
    assert response.headers["x-isthmus-cluster"] == "west-1"
    assert (first + rest) == b"first part, the rest"
    assert first.startswith(b"first part")
    assert head_after < 1.0 and first_after < 1.0, (head_after, first_after)
    assert whole_after >= 1.5


@pytest.mark.parametrize("http2", [False, True], ids=["http1-client", "h2c-client"])
@pytest.mark.parametrize("host", ["echo.demo", "h2echo.demo"])
async def test_a_response_head_sent_alone_is_not_held_for_the_body(topology, http2, host):
    async with httpx.AsyncClient(base_url=topology.outbound, http1=not http2, http2=http2, timeout=10) as client:
        started = trio.current_time()
        with trio.fail_after(5):
            async with client.stream("GET", "/late/1.5", headers={"host": host}) as response:
                head_after = trio.current_time() - started
                body = await response.aread()
                body_after = trio.current_time() - started
    assert response.status_code == 200 and body == b"late body", (response.headers, body)
    assert head_after < 1.0, head_after
    assert body_after >= 1.5


async def test_unknown_peer_cluster_is_503_cluster_unknown(gateway_pki):
    import attrs

    from registry.model import Endpoint, Locality
    from tests.integration.gateway.support import open_topology

    async with open_topology(gateway_pki) as topo:
        lost = Endpoint("nowhere.demo", "east-2", "127.0.0.1", 9, Locality("us-east", "us-east-1c"))
        catalog = attrs.evolve(topo.east_catalog, revision=2,
                               endpoints={**topo.east_catalog.endpoints, lost.id: lost})
        topo.east.apply_catalog(catalog)
        async with httpx.AsyncClient(base_url=topo.outbound) as client:
            response = await client.get("/", headers={"host": "nowhere.demo"})
    assert response.status_code == 503
    assert response.headers["x-isthmus-reason"] == "cluster-unknown"


async def test_metrics_admin_and_catalog_endpoints(topology):
    async with httpx.AsyncClient(base_url=topology.outbound) as client:
        await client.get("/headers", headers={"host": "echo.demo"})
    host, port = topology.west.addresses["admin"]
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as admin:
        metrics = (await admin.get("/metrics")).text
        assert (await admin.get("/ready")).status_code == 200
        assert (await admin.get("/healthz")).status_code == 200
        catalog = json.loads((await admin.get("/catalog")).text)
    assert 'isthmus_requests_total{destination_cluster="west-1",destination_service="echo.demo"' in metrics
    assert 'source_cluster="east-1"' in metrics
    assert "isthmus_request_duration_seconds_bucket" in metrics
    assert catalog["catalog"]["cluster"] == "west-1"
    assert catalog["catalog"]["revision"] == 1


async def test_east_west_serves_http1_over_mutual_tls_with_the_verified_identity(topology):
    context = topology.pki.client_context("east-1", "app", alpn=("http/1.1",))
    tcp = await trio.open_tcp_stream(*topology.west_eastwest)
    tls = trio.SSLStream(tcp, context, server_hostname="echo.demo")
    async with tls:
        await tls.send_all(b"GET /headers HTTP/1.1\r\nhost: echo.demo.mesh.example\r\n"
                           b"x-isthmus-peer-identity: spiffe://mesh.example/cluster/west-1/admin\r\n\r\n")
        data = b""
        with trio.fail_after(5):
            while not data.endswith(b"0\r\n\r\n"):
                data += await tls.receive_some(65536)
    assert tls.selected_alpn_protocol() == "http/1.1"
    assert data.startswith(b"HTTP/1.1 200")
    body = json.loads(data.split(b"\r\n\r\n", 1)[1].split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0])
    identities = [v for n, v in body["headers"] if n == "x-isthmus-peer-identity"]
    assert identities == ["spiffe://mesh.example/cluster/east-1/app"]
