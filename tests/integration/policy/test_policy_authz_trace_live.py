"""Authorization at the receiving gateway, W3C trace context across both gateways, access logs."""

from __future__ import annotations

import attrs
import httpx

from gateway.policy.accesslog import ALL_FIELDS
from tests.integration.gateway.support import metric_value
from tests.integration.policy.policy_support import open_policy_topology

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def test_an_unlinked_cluster_is_refused_403(policy_pki, tmp_path):
    async with open_policy_topology(policy_pki, tmp_path) as topo:
        # west-1 forgets east-1: default deny for clusters that are not linked.
        topo.west.apply_catalog(attrs.evolve(topo.west_catalog, revision=2, peers={}))
        async with httpx.AsyncClient(base_url=topo.outbound, timeout=10) as client:
            denied = await client.get("/headers", headers={"host": "echo.demo"})
        assert denied.status_code == 403
        assert denied.headers["x-isthmus-reason"] == "not-linked"
        assert denied.headers["x-isthmus-cluster"] == "west-1"
        assert metric_value(topo.west, "isthmus_authz_denials_total", reason="not-linked",
                            source_cluster="east-1") == 1


async def test_a_denied_spiffe_pattern_gets_403_and_an_allowed_one_passes(policy_pki, tmp_path):
    authz = {"rules": [
        {"service": "echo.demo", "source": "spiffe://mesh.example/cluster/east-*/*", "action": "deny",
         "name": "no east on echo"},
        {"service": "h2echo.demo", "source": "spiffe://mesh.example/cluster/east-1/gateway", "action": "allow"},
    ]}
    async with open_policy_topology(policy_pki, tmp_path, west_authz=authz) as topo:
        async with httpx.AsyncClient(base_url=topo.outbound, timeout=10) as client:
            denied = await client.get("/headers", headers={"host": "echo.demo"})
            allowed = await client.get("/headers", headers={"host": "h2echo.demo"})
        assert denied.status_code == 403
        assert denied.headers["x-isthmus-reason"] == "denied-by-rule"
        assert len(denied.headers["x-isthmus-trace-id"]) == 32
        assert allowed.status_code == 200
        assert metric_value(topo.west, "isthmus_authz_denials_total", reason="denied-by-rule") == 1
        await topo.flush_logs()
        west = [line for line in topo.log_lines("west") if line["destination_service"] == "echo.demo"]
        assert west[0]["response_code"] == 403 and west[0]["reason"] == "denied-by-rule"


async def test_a_client_trace_id_reaches_the_access_logs_of_both_gateways(policy_topology):
    async with httpx.AsyncClient(base_url=policy_topology.outbound, timeout=10) as client:
        response = await client.get("/headers", headers={"host": "echo.demo", "traceparent": TRACEPARENT,
                                                          "tracestate": "vendor=abc"})
        await client.get("/bytes/10", headers={"host": "echo.demo"})  # no trace: one is started
    assert response.status_code == 200
    upstream = dict(response.json()["headers"])
    assert upstream["traceparent"].split("-")[1] == TRACE_ID
    assert upstream["traceparent"] != TRACEPARENT  # a new parent id for each hop
    assert upstream["tracestate"] == "vendor=abc"
    await policy_topology.flush_logs()
    east = [line for line in policy_topology.log_lines("east") if line["trace_id"] == TRACE_ID]
    west = [line for line in policy_topology.log_lines("west") if line["trace_id"] == TRACE_ID]
    assert len(east) == 1 and len(west) == 1
    assert east[0]["listener"] == "outbound" and west[0]["listener"] == "eastwest"
    assert east[0]["request_id"] == west[0]["request_id"]
    assert east[0]["destination_cluster"] == "west-1" and east[0]["response_code"] == 200
    assert west[0]["source_identity"] == "spiffe://mesh.example/cluster/east-1/gateway"
    started = [line for line in policy_topology.log_lines("east") if line["path"] == "/bytes/10"]
    assert started, policy_topology.log_lines("east")
    assert len(started[0]["trace_id"]) == 32 and started[0]["trace_id"] != TRACE_ID


async def test_every_access_log_line_is_json_with_every_field(policy_topology):
    async with httpx.AsyncClient(base_url=policy_topology.outbound, timeout=10) as client:
        for path, host in (("/headers", "split.demo"), ("/headers", "split.demo"), ("/status/503", "echo.demo"),
                           ("/headers", "nowhere.demo"), ("/fault", "echo.demo")):
            await client.get(path, headers={"host": host})
    await policy_topology.flush_logs()
    lines = policy_topology.log_lines("east") + policy_topology.log_lines("west")
    assert len(lines) >= 6
    for line in lines:
        assert tuple(line) == ALL_FIELDS
        assert line["kind"] == "http" and line["gateway"] in ("east-1", "west-1")
        assert isinstance(line["duration_ms"], float)
    unknown = [line for line in lines if line["authority"] == "nowhere.demo"]
    assert unknown[0]["response_code"] == 404 and unknown[0]["reason"] == "service-unknown"
    crossed = [line for line in lines if line["gateway"] == "east-1" and line["destination_cluster"] == "west-1"]
    assert all(line["attempts"] >= 1 and line["endpoint"] for line in crossed)
