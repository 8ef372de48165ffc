"""Route rules through two real gateways: weighted split, header edits in both directions where
their conditions hold, path rewrite, fault aborts, source-cluster faults, and a refused table."""

from __future__ import annotations

import attrs
import httpx

from registry.model import RouteRules
from tests.integration.gateway.support import metric_value

SPLIT_REQUESTS = 400


async def test_weighted_split_converges_to_its_weights(policy_topology):
    """90/10 over 400 requests: the v2 share is within 4 standard deviations of 10 %
    (sd = sqrt(400 * 0.1 * 0.9) = 6 requests, so 40 +- 24), and v2 answers come from west-1."""
    counts = {"east-1": 0, "west-1": 0}
    async with httpx.AsyncClient(base_url=policy_topology.outbound, timeout=10) as client:
        for _ in range(SPLIT_REQUESTS):
            response = await client.get("/headers", headers={"host": "split.demo"})
            assert response.status_code == 200, response.text
            cluster = response.headers["x-isthmus-cluster"]
            counts[cluster] += 1
            # The response edit applies only when the call left for eu-west.
            assert ("x-came-from" in response.headers) == (cluster == "west-1")
    assert 16 <= counts["west-1"] <= 64, counts
    assert counts["east-1"] + counts["west-1"] == SPLIT_REQUESTS


async def test_header_rules_apply_both_ways_only_where_their_conditions_hold(policy_topology):
    async with httpx.AsyncClient(base_url=policy_topology.outbound, timeout=10) as client:
        response = await client.get("/headers", headers={"host": "echo.demo", "x-drop-me": "1", "x-env": "prod"})
        other = await client.get("/bytes/3", headers={"host": "echo.demo"})
    assert response.status_code == 200
    sent = {}
    for name, value in response.json()["headers"]:
        sent.setdefault(name, []).append(value)
    assert sent["x-env"] == ["test"]  # set replaces the client's value
    assert "x-drop-me" not in sent
    assert sent["x-isthmus-region"] == ["eu-west"]  # the call left for eu-west
    assert "x-never" not in sent  # ap-south condition does not hold
    assert response.headers["x-route"] == "headers"
    assert response.headers["x-left-for"] == "eu-west"
    assert "x-never" not in response.headers
    # A path the rule does not match gets no edits.
    assert other.status_code == 200 and "x-route" not in other.headers


async def test_path_prefix_rewrite(policy_topology):
    async with httpx.AsyncClient(base_url=policy_topology.outbound, timeout=10) as client:
        response = await client.get("/old?x=1", headers={"host": "echo.demo"})
    assert response.status_code == 200
    assert response.json()["path"] == "/headers"


async def test_fault_abort_percentage_is_within_tolerance(policy_topology):
    """30 % of 300 requests abort with 418: 90 expected, sd 7.9; accepted 58-122 (4 sd)."""
    aborted = 0
    async with httpx.AsyncClient(base_url=policy_topology.outbound, timeout=10) as client:
        for _ in range(300):
            response = await client.get("/fault", headers={"host": "echo.demo"})
            if response.status_code == 418:
                aborted += 1
                assert response.headers["x-isthmus-reason"] == "fault-injected"
                assert len(response.headers["x-isthmus-trace-id"]) == 32
            else:
                assert response.status_code == 404  # the echo app has no /fault: the request went through
    assert 58 <= aborted <= 122, aborted


async def test_fault_limited_to_a_source_cluster_fires_at_the_receiving_gateway(policy_topology):
    async with httpx.AsyncClient(base_url=policy_topology.outbound, timeout=10) as client:
        teapot = await client.get("/teapot", headers={"host": "echo.demo"})
    assert teapot.status_code == 418
    assert teapot.headers["x-isthmus-cluster"] == "west-1"  # west-1 answered, for its caller east-1
    assert metric_value(policy_topology.west, "isthmus_requests_total", response_code="418") == 1


async def test_rules_that_fail_to_compile_keep_the_previous_table(policy_topology, caplog):
    east = policy_topology.east
    before = east.traffic.routes
    bad_rules = [{**policy_topology.east_catalog.routes["split.demo"].rules[0],
                  "split": [{"subset": {"version": "v1"}, "weight": 90}, {"subset": {"version": "v2"}, "weight": 5}]}]
    bad = attrs.evolve(policy_topology.east_catalog, revision=2,
                       routes={**policy_topology.east_catalog.routes, "split.demo": RouteRules("split.demo", bad_rules)})
    east.apply_catalog(bad)
    await east.traffic.on_catalog(bad)
    assert east.traffic.routes is before
    assert 'split.demo route "canary": weights sum to 95, not 100' in caplog.text
    async with httpx.AsyncClient(base_url=policy_topology.outbound, timeout=10) as client:
        response = await client.get("/old", headers={"host": "echo.demo"})
    assert response.json()["path"] == "/headers"  # the running rules still apply
