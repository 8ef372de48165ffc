"""Two gateways (east-1 calling west-1) with traffic policy on, for the policy integration tests.

- `echo.demo` runs in west-1 only (labels `version=v1`); east-1's rules edit its request and
  response headers (some only when the call leaves for `eu-west`), rewrite `/old` to `/headers`
  and abort a share of `/fault` requests; west-1's rule aborts `/teapot` for callers from east-1.
- `split.demo` has a `version=v1` endpoint in east-1 and a `version=v2` endpoint in west-1;
  east-1 splits it 90/10, and marks responses that came from `eu-west`.
Both gateways write access logs to files under the test's directory and authorize with `[authz]`
(east-1 is a linked peer of west-1).
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from certs.testing import TestPki
from gateway.authz import AuthzPolicy
from gateway.catalog_source import StaticCatalogSource
from gateway.policy.accesslog import AccessLogConfig
from gateway.server import Gateway, serve_gateway
from registry.model import Catalog, Endpoint, Export, Peer, RouteRules, Service
from tests.integration.gateway.support import EAST, WEST, eventually, gateway_config, serve_hypercorn

SPLIT_RULES = [
    {
        "name": "canary",
        "match": {"path_prefix": "/"},
        "split": [{"subset": {"version": "v1"}, "weight": 90}, {"subset": {"version": "v2"}, "weight": 10}],
        "when_leaving_for": {"region": "eu-west", "response_headers": {"add": {"x-came-from": "eu-west"}}},
    }
]
ECHO_RULES = [
    {"name": "rewrite", "match": {"path_prefix": "/old"}, "rewrite_prefix": "/headers"},
    {"name": "faulty", "match": {"path_prefix": "/fault"}, "fault": {"abort": {"percent": 30, "status": 418}}},
    {
        "name": "headers",
        "match": {"path_prefix": "/headers"},
        "request_headers": {"set": {"x-env": "test"}, "remove": ["x-drop-me"]},
        "response_headers": {"add": {"x-route": "headers"}},
        "when_leaving_for": [
            {"region": "eu-west", "request_headers": {"add": {"x-isthmus-region": "eu-west"}},
             "response_headers": {"add": {"x-left-for": "eu-west"}}},
            {"region": "ap-south", "request_headers": {"add": {"x-never": "1"}},
             "response_headers": {"add": {"x-never": "1"}}},
        ],
    },
]
WEST_ECHO_RULES = [
    {"name": "teapot-for-east", "match": {"path_prefix": "/teapot", "source_cluster": "east-1"},
     "fault": {"abort": {"percent": 100, "status": 418}}},
]


@attrs.define
class PolicyTopology:
    pki: TestPki
    east: Gateway
    west: Gateway
    east_catalog: Catalog
    west_catalog: Catalog
    east_log: Path
    west_log: Path

    @property
    def outbound(self) -> str:
        host, port = self.east.addresses["outbound"]
        return f"http://{host}:{port}"

    async def flush_logs(self) -> None:
        """Every finished request's line written: a response reaches the client just before its
        gateway submits the line, so wait for no request in flight first."""
        for gateway in (self.east, self.west):
            await eventually(lambda gateway=gateway: gateway.proxy.in_flight == 0)
            await gateway.traffic.access_log.flushed()

    def log_lines(self, which: str) -> list[dict[str, Any]]:
        path = self.east_log if which == "east" else self.west_log
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def policy_catalogs(west_gateway: str, http_port: int, host: str = "127.0.0.1") -> tuple[Catalog, Catalog]:
    services = {
        "echo.demo": Service("echo", "demo", protocol="http"),
        "split.demo": Service("split", "demo", protocol="http"),
        "h2echo.demo": Service("h2echo", "demo", protocol="http2"),
    }
    endpoints = [
        Endpoint("echo.demo", "west-1", host, http_port, WEST, id="west-1/echo", labels={"version": "v1"}),
        Endpoint("h2echo.demo", "west-1", host, http_port, WEST, id="west-1/h2echo"),
        Endpoint("split.demo", "west-1", host, http_port, WEST, id="west-1/split", labels={"version": "v2"}),
        Endpoint("split.demo", "east-1", host, http_port, EAST, id="east-1/split", labels={"version": "v1"}),
    ]
    west_endpoints = {e.id: e for e in endpoints if e.cluster == "west-1"}
    exports = {key: Export(key, ["*"]) for key in services}
    east_peer = Peer("east-1", "us-east", ("us-east-1a",), gateway="127.0.0.1:9")
    west = Catalog(cluster="west-1", revision=1, services=services, endpoints=west_endpoints, exports=exports,
                   peers={"east-1": east_peer}, routes={"echo.demo": RouteRules("echo.demo", WEST_ECHO_RULES)})
    west_peer = Peer("west-1", "eu-west", ("eu-west-1a",), gateway=west_gateway)
    east = Catalog(
        cluster="east-1", revision=1, services=services, endpoints={e.id: e for e in endpoints},
        peers={"west-1": west_peer},
        routes={"split.demo": RouteRules("split.demo", SPLIT_RULES), "echo.demo": RouteRules("echo.demo", ECHO_RULES)},
    )
    return east, west


@asynccontextmanager
async def open_policy_topology(pki: TestPki, tmp: Path, *, west_authz: dict | None = None,
                               seed: int = 7) -> AsyncIterator[PolicyTopology]:
    host = "127.0.0.1"
    east_log, west_log = tmp / "east-access.log", tmp / "west-access.log"
    async with trio.open_nursery() as nursery:
        http_port = await serve_hypercorn(nursery, host)
        _, west_catalog = policy_catalogs("127.0.0.1:9", http_port, host)
        west = await nursery.start(
            lambda task_status: serve_gateway(
                gateway_config(pki, "west-1", WEST), StaticCatalogSource(west_catalog),
                authz=AuthzPolicy.from_mapping(west_authz), access_log=AccessLogConfig(path=str(west_log)),
                task_status=task_status,
            )
        )
        west_host, west_port = west.addresses["eastwest"]
        east_catalog, west_catalog = policy_catalogs(f"{west_host}:{west_port}", http_port, host)
        east = await nursery.start(
            lambda task_status: serve_gateway(
                gateway_config(pki, "east-1", EAST), StaticCatalogSource(east_catalog),
                authz=AuthzPolicy(), access_log=AccessLogConfig(path=str(east_log)), task_status=task_status,
            )
        )
        # A fixed seed: the weighted split and fault draws are reproducible.
        east.traffic.rng = random.Random(seed)
        west.traffic.rng = random.Random(seed + 1)
        yield PolicyTopology(pki, east, west, east_catalog, west_catalog, east_log, west_log)
        nursery.cancel_scope.cancel()
