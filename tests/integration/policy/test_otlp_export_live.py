"""Span export over OTLP/HTTP with two real gateways (east-1 calling west-1 over mutual TLS) and a
real OTLP/HTTP receiver on loopback that decodes what arrives with `opentelemetry.proto`.

A call's spans form one trace: the client's span -> east-1's CLIENT span -> west-1's SERVER span
-> the backend (which sees west-1's span id as its parent). A collector that is down costs the
requests nothing and is logged once per gateway; without the extra nothing changes."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import trio

from federation.cli import main
from gateway.catalog_source import StaticCatalogSource
from gateway.config import TracingConfig
from gateway.errors import ConfigInvalid
from gateway.server import Gateway, serve_gateway
from tests.conftest import free_port
from tests.integration.gateway.support import EAST, WEST, eventually, gateway_config, serve_hypercorn
from tests.integration.policy.policy_support import policy_catalogs

HOST = "127.0.0.1"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
ERROR_TRACE_ID = "5bf92f3577b34da6a3ce929d0e0e4737"
CLIENT_SPAN = "00f067aa0ba902b7"


class OtlpReceiver:
    """A minimal OTLP/HTTP collector: POST /v1/traces with a protobuf `ExportTraceServiceRequest`."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        self.pb = trace_service_pb2
        self.spans: list[tuple[str, Any]] = []  # (service.name, Span)
        self.posts = 0
        self.server = ThreadingHTTPServer((HOST, 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.path != "/v1/traces" or self.headers["content-type"] != "application/x-protobuf":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = receiver.pb.ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    service = attributes(resource_spans.resource.attributes)["service.name"]
                    for scope_spans in resource_spans.scope_spans:
                        receiver.spans.extend((service, span) for span in scope_spans.spans)
                receiver.posts += 1
                reply = receiver.pb.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> OtlpReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def trace(self, trace_id: str) -> dict[str, Any]:
        """The spans of one trace by service name."""
        return {service: span for service, span in self.spans if span.trace_id.hex() == trace_id}


def attributes(values: Any) -> dict[str, Any]:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in values}


@asynccontextmanager
async def open_traced_pair(pki: Any, tracing: TracingConfig | None) -> AsyncIterator[tuple[Gateway, Gateway]]:
    """West-1 serving `echo.demo` from a hypercorn upstream, east-1 calling it; both with `tracing`."""
    async with trio.open_nursery() as nursery:
        http_port = await serve_hypercorn(nursery, HOST)
        _, west_catalog = policy_catalogs("127.0.0.1:9", http_port, HOST)
        west = await nursery.start(lambda task_status: serve_gateway(
            gateway_config(pki, "west-1", WEST), StaticCatalogSource(west_catalog), tracing=tracing,
            task_status=task_status))
        west_host, west_port = west.addresses["eastwest"]
        east_catalog, _ = policy_catalogs(f"{west_host}:{west_port}", http_port, HOST)
        east = await nursery.start(lambda task_status: serve_gateway(
            gateway_config(pki, "east-1", EAST), StaticCatalogSource(east_catalog), tracing=tracing,
            task_status=task_status))
        yield east, west
        nursery.cancel_scope.cancel()


def outbound(east: Gateway) -> str:
    host, port = east.addresses["outbound"]
    return f"http://{host}:{port}"


def _extra_installed() -> bool:
    try:
        import opentelemetry.exporter.otlp.proto.http  # noqa: F401
        import opentelemetry.proto  # noqa: F401
        import opentelemetry.sdk  # noqa: F401
    except ImportError:
        return False
    return True


needs_extra = pytest.mark.skipif(not _extra_installed(),
                                 reason="the otlp extra is not installed (pip install 'isthmus[otlp]')")


@needs_extra
async def test_both_hops_spans_reach_the_collector_as_one_trace(policy_pki):
    with OtlpReceiver() as receiver:
        tracing = TracingConfig(otlp_endpoint=receiver.endpoint, flush_interval_s=0.05)
        async with open_traced_pair(policy_pki, tracing) as (east, _), \
                httpx.AsyncClient(base_url=outbound(east), timeout=10) as client:
            ok = await client.get("/headers", headers={"host": "echo.demo",
                                                       "traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"})
            failed = await client.get("/status/503", headers={
                "host": "echo.demo", "traceparent": f"00-{ERROR_TRACE_ID}-{CLIENT_SPAN}-01"})
            started = await client.get("/headers", headers={"host": "echo.demo"})  # the gateway starts a trace
            assert ok.status_code == 200 and failed.status_code == 503 and started.status_code == 200
            await eventually(lambda: len(receiver.spans) >= 6)

    backend_parent = dict(ok.json()["headers"])["traceparent"].split("-")
    spans = receiver.trace(TRACE_ID)
    assert set(spans) == {"isthmus-east-1", "isthmus-west-1"}
    source, destination = spans["isthmus-east-1"], spans["isthmus-west-1"]
    pb = source.__class__
    assert source.kind == pb.SPAN_KIND_CLIENT and destination.kind == pb.SPAN_KIND_SERVER
    assert source.parent_span_id.hex() == CLIENT_SPAN  # the client's span
    assert destination.parent_span_id == source.span_id  # west-1's parent is east-1's span
    assert backend_parent[1] == TRACE_ID and backend_parent[2] == destination.span_id.hex()
    assert source.name == destination.name == "GET echo.demo"
    assert source.start_time_unix_nano <= destination.start_time_unix_nano
    assert destination.end_time_unix_nano <= source.end_time_unix_nano
    assert source.status.code == destination.status.code == source.status.STATUS_CODE_UNSET
    east_attrs, west_attrs = attributes(source.attributes), attributes(destination.attributes)
    for attrs in (east_attrs, west_attrs):
        assert attrs["http.request.method"] == "GET" and attrs["http.response.status_code"] == 200
        assert attrs["server.address"] == "echo.demo" and attrs["url.path"] == "/headers"
        assert attrs["isthmus.source_cluster"] == "east-1" and attrs["isthmus.destination_cluster"] == "west-1"
        assert attrs["isthmus.attempts"] == 1 and attrs["isthmus.destination_service"] == "echo.demo"
    assert east_attrs["isthmus.listener"] == "outbound" and west_attrs["isthmus.listener"] == "eastwest"
    assert east_attrs["isthmus.locality_priority"] >= 1  # west-1 is another region
    assert west_attrs["isthmus.locality_priority"] == 0  # west-1 serves its own endpoint
    assert west_attrs["isthmus.source_identity"] == "spiffe://mesh.example/cluster/east-1/gateway"

    errors = receiver.trace(ERROR_TRACE_ID)
    assert set(errors) == {"isthmus-east-1", "isthmus-west-1"}
    for span in errors.values():
        assert span.status.code == span.status.STATUS_CODE_ERROR
        assert attributes(span.attributes)["http.response.status_code"] == 503

    new = [span for _, span in receiver.spans if span.trace_id.hex() not in (TRACE_ID, ERROR_TRACE_ID)]
    assert len(new) == 2 and len({span.trace_id for span in new}) == 1
    root = next(span for span in new if not span.parent_span_id)
    child = next(span for span in new if span.parent_span_id)
    assert root.kind == pb.SPAN_KIND_CLIENT and child.parent_span_id == root.span_id
    assert dict(started.json()["headers"])["traceparent"].endswith("-01")  # sampled onward


@needs_extra
async def test_a_collector_that_is_down_neither_fails_nor_slows_requests(policy_pki, caplog):
    caplog.set_level(logging.INFO)
    tracing = TracingConfig(otlp_endpoint=f"http://{HOST}:{free_port(HOST)}", flush_interval_s=0.05,
                            export_timeout_s=0.5)
    async with open_traced_pair(policy_pki, tracing) as (east, west):
        async with httpx.AsyncClient(base_url=outbound(east), timeout=10) as client:
            slowest = 0.0
            for _ in range(20):
                began = trio.current_time()
                response = await client.get("/headers", headers={"host": "echo.demo"})
                slowest = max(slowest, trio.current_time() - began)
                assert response.status_code == 200
            await eventually(lambda: east.spans.exporter.failing and west.spans.exporter.failing)
            # More requests while the collector is known down: still answered.
            for _ in range(5):
                assert (await client.get("/headers", headers={"host": "echo.demo"})).status_code == 200
        leaving = trio.current_time()
    exit_s = trio.current_time() - leaving
    assert slowest < 0.5  # an export attempt takes up to export_timeout_s, in its own thread
    assert exit_s < 1.0  # nothing waits for a collector known to be down
    ours = [r.getMessage() for r in caplog.records if r.name == "isthmus.gateway.otlp"]
    assert sorted(ours) == [f"tracing: cannot export isthmus-{cluster} spans to {tracing.traces_url}; requests go "
                            "on, spans are dropped until it answers (logged once)" for cluster in ("east-1", "west-1")]
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry") and r.levelno >= logging.WARNING]




async def test_without_the_extra_the_gateways_serve_and_tracing_is_refused(policy_pki, without_opentelemetry):
    async with open_traced_pair(policy_pki, None) as (east, _), \
            httpx.AsyncClient(base_url=outbound(east), timeout=10) as client:
        response = await client.get("/headers", headers={"host": "echo.demo"})
        assert response.status_code == 200
    with pytest.raises(ConfigInvalid, match=r"needs the otlp extra \(.+\): pip install 'isthmus\[otlp\]'$"):
        Gateway(gateway_config(policy_pki, "east-1", EAST), tracing=TracingConfig())


@needs_extra
async def test_spans_still_queued_when_the_gateways_exit_are_flushed(policy_pki):
    with OtlpReceiver() as receiver:
        tracing = TracingConfig(otlp_endpoint=receiver.endpoint, flush_interval_s=60.0)
        async with open_traced_pair(policy_pki, tracing) as (east, _), \
                httpx.AsyncClient(base_url=outbound(east), timeout=10) as client:
            response = await client.get("/headers", headers={"host": "echo.demo",
                                                             "traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"})
            assert response.status_code == 200
            assert receiver.spans == []  # a minute's batch: nothing sent yet
        assert set(receiver.trace(TRACE_ID)) == {"isthmus-east-1", "isthmus-west-1"}


@pytest.fixture
def refused_before_serving(monkeypatch):
    """The CLI tests below run `isthmus gateway` in this process: were the refusal to be missed, the
    gateway would serve forever; with this it fails the test at once instead."""
    import gateway.server

    async def serving(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the gateway started serving: the [tracing] table was not refused")

    monkeypatch.setattr(gateway.server, "serve_gateway", serving)


def cli_config(tmp_path: Any, pki_dir: Any, tracing: str) -> str:
    (tmp_path / "catalog.json").write_text(
        '{"cluster": "east-1", "revision": 1, "services": [], "endpoints": [], "exports": []}')
    lines = ['trust_domain = "mesh.example"', "[cluster]", 'name = "east-1"', 'region = "us-east"',
             'zones = ["us-east-1a"]', "[pki]", f'dir = "{pki_dir}"', "[gateway]",
             *(f'{name} = "127.0.0.1:{free_port(HOST)}"' for name in ("eastwest", "outbound", "admin")),
             'catalog_file = "catalog.json"', "[tracing]", tracing]
    path = tmp_path / "east-1.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize(
    ("tracing", "expected"),
    [
        ("sample_ratio = 2", "isthmus: error: tracing.sample_ratio: 2 is not a number in [0, 1]\n"),
        ('otlp_endpoint = "udp://127.0.0.1:4318"',
         "isthmus: error: tracing.otlp_endpoint: 'udp://127.0.0.1:4318' is not an http:// or https:// URL\n"),
    ],
)
def test_the_gateway_command_refuses_a_bad_tracing_table_in_one_line(tmp_path, policy_pki, capsys, tracing,
                                                                      expected, refused_before_serving):
    assert main(["gateway", "--config", cli_config(tmp_path, policy_pki.dir, tracing)]) == 2
    assert capsys.readouterr().err == expected


def test_the_gateway_command_without_the_extra_names_it_in_one_line(tmp_path, policy_pki, capsys,
                                                                     without_opentelemetry, refused_before_serving):
    config = cli_config(tmp_path, policy_pki.dir, 'otlp_endpoint = "http://127.0.0.1:4318"')
    assert main(["gateway", "--config", config]) == 2
    err = capsys.readouterr().err
    assert err.startswith("isthmus: error: tracing: [tracing] needs the otlp extra (")
    assert err.endswith("): pip install 'isthmus[otlp]'\n") and err.count("\n") == 1
