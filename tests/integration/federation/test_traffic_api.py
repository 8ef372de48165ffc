"""Route rules and failover policies through a real control plane's API on loopback: written, read
back and removed; bad rules refused with the rule named and the registry revision unmoved; unknown
services, a registry that is down and calls from across the cluster boundary refused in one line;
and a rule written through the API changes what the cluster's gateway answers."""

from __future__ import annotations

import httpx
import pytest
import trio

from certs import tls
from certs.testing import make_pki
from registry.errors import RegistryUnavailable
from registry.model import Endpoint, Locality, Service
from registry.store import Store
from registry.testing import FakeBackend
from tests.integration.crossing.support import CLUSTERS, Cluster, cluster_config, wait_for
from tests.integration.gateway.support import serve_hypercorn

LOC = Locality("us-east", "us-east-1a")
CANARY = [{"name": "canary", "match": {"path_prefix": "/"},
           "split": [{"subset": {"version": "v1"}, "weight": 90}, {"subset": {"version": "v2"}, "weight": 10}]}]  # fmt: skip
BAD = [
    ([{"name": "re", "match": {"path_regex": "/a(["}}], 'checkout.shop route "re": match.path_regex: invalid regular expression'),
    ([{"name": "canary", "split": [{"subset": {"version": "v1"}, "weight": 90}, {"subset": {"version": "v2"}, "weight": 5}]}],
     'checkout.shop route "canary": weights sum to 95, not 100'),
    ([{"name": "v3", "subset": {"version": "v3"}}], 'checkout.shop route "v3": subset version=v3 matches no endpoint of checkout.shop'),
    ([{"name": "hdr", "request_headers": {"add": {"bad header": "x"}}}], 'checkout.shop route "hdr": request_headers.add: header name'),
]  # fmt: skip


@pytest.fixture
async def east(tmp_path, nursery):
    pki = make_pki(tmp_path / "pki", clusters=CLUSTERS)
    cluster = Cluster(nursery, cluster_config(tmp_path, "east-1", pki.dir), FakeBackend(), heartbeat_s=0.3)
    await cluster.start_control()
    store = Store(cluster.backend)
    for version, port in (("v1", 9001), ("v2", 9002)):
        await store.register_endpoints(Service.from_key("checkout.shop"), [
            Endpoint("checkout.shop", "east-1", "127.0.1.10", port, LOC, labels={"version": version})])  # fmt: skip
    await wait_for(lambda: cluster.plane.catalogs.current is not None
                   and "checkout.shop" in cluster.plane.catalogs.current.services, "checkout.shop served")  # fmt: skip
    cluster.pki = pki
    return cluster


def api(cluster):
    return httpx.AsyncClient(base_url=f"http://{cluster.config.control_api}/v1/services", timeout=5, trust_env=False)


async def revision(cluster) -> int:
    return (await cluster.backend.status()).revision


async def test_route_rules_are_written_read_back_and_removed(east):
    async with api(east) as client:
        empty = await client.get("/checkout.shop/routes")
        assert empty.status_code == 200
        assert empty.json() == {"cluster": "east-1", "service": "checkout.shop", "rules": [], "stored": False,
                                "revision": await revision(east)}  # fmt: skip
        put = await client.put("/checkout.shop/routes", json={"rules": CANARY})
        assert put.status_code == 200, put.text
        assert put.json()["rules"] == CANARY and put.json()["stored"] is True
        assert put.json()["revision"] == await revision(east)
        got = (await client.get("/checkout.shop/routes")).json()
        assert got["rules"] == CANARY and got["revision"] == put.json()["revision"]
        # The control plane serves them to its gateways with the next catalog.
        await wait_for(lambda: "checkout.shop" in east.plane.catalogs.current.routes, "rules served")
        assert list(east.plane.catalogs.current.routes["checkout.shop"].rules) == CANARY

        removed = await client.delete("/checkout.shop/routes")
        assert removed.status_code == 200 and removed.json()["removed"] is True
        again = await client.delete("/checkout.shop/routes")
        assert again.json()["removed"] is False and again.json()["revision"] == removed.json()["revision"]
        assert (await client.get("/checkout.shop/routes")).json()["stored"] is False


async def test_a_policy_is_written_read_back_and_removed(east):
    spec = {"failover": ["eu-west", "us-west"], "outlier": {"consecutive_5xx": 3}}
    async with api(east) as client:
        assert (await client.get("/checkout.shop/policy")).json()["policy"] is None
        put = await client.put("/checkout.shop/policy", json=spec)
        assert put.status_code == 200, put.text
        assert put.json()["policy"] == spec and put.json()["revision"] == await revision(east)
        assert (await client.get("/checkout.shop/policy")).json()["policy"] == spec
        await wait_for(lambda: "checkout.shop" in east.plane.catalogs.current.policies, "policy served")
        bad = await client.put("/checkout.shop/policy", json={"outlier": {"consecutive_5xx": -1}})
        assert bad.status_code == 400
        assert bad.json() == {"error": 'policy "checkout.shop": outlier.consecutive_5xx: -1 is not an integer >= 0'}
        assert (await client.get("/checkout.shop/policy")).json()["policy"] == spec
        assert (await client.delete("/checkout.shop/policy")).json()["removed"] is True
        assert (await client.get("/checkout.shop/policy")).json()["stored"] is False


async def test_bad_rules_are_refused_with_the_rule_named_and_nothing_written(east):
    async with api(east) as client:
        assert (await client.put("/checkout.shop/routes", json={"rules": CANARY})).status_code == 200
        before = await revision(east)
        for rules, message in BAD:
            response = await client.put("/checkout.shop/routes", json={"rules": rules})
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert message in error and "\n" not in error
        for body, message in ((b"{not json", "the request body is not JSON"),
                              (b'{"rule": []}', '{"rules": [...]}')):  # fmt: skip
            response = await client.put("/checkout.shop/routes", content=body)
            assert response.status_code == 400 and message in response.json()["error"]
        assert await revision(east) == before  # not one write
        assert (await client.get("/checkout.shop/routes")).json()["rules"] == CANARY
    assert list(east.plane.catalogs.current.routes["checkout.shop"].rules) == CANARY


async def test_unknown_services_are_404_in_one_line(east):
    async with api(east) as client:
        before = await revision(east)
        for method, path, body in (("GET", "/payments.shop/routes", None), ("GET", "/payments.shop/policy", None),
                                   ("PUT", "/payments.shop/policy", {"failover": ["eu-west"]}),
                                   ("PUT", "/payments.shop/routes", {"rules": CANARY})):  # fmt: skip
            response = await client.request(method, path, json=body)
            assert response.status_code == 404, (method, path, response.text)
            assert "payments.shop" in response.json()["error"] and "no such service" in response.json()["error"]
        # The rule is named when there is one.
        assert (await client.put("/payments.shop/routes", json={"rules": CANARY})).json()["error"] == (
            'payments.shop route "canary": no such service in the catalog')
        bad_name = await client.get("/Payments/routes")
        assert bad_name.status_code == 400 and "name.namespace" in bad_name.json()["error"]
        wrong_method = await client.post("/checkout.shop/routes", json={"rules": CANARY})
        assert wrong_method.status_code == 405
        assert await revision(east) == before


async def test_a_registry_that_is_down_is_503_in_one_line(east):
    east.backend.fail_with = RegistryUnavailable("memory", "connection refused", "is etcd running?")
    try:
        async with api(east) as client:
            for method, path, body in (("GET", "/checkout.shop/routes", None),
                                       ("PUT", "/checkout.shop/routes", {"rules": CANARY}),
                                       ("DELETE", "/checkout.shop/policy", None)):  # fmt: skip
                response = await client.request(method, path, json=body)
                assert response.status_code == 503
                assert response.json()["error"] == "registry at memory is unavailable: connection refused (is etcd running?)"
    finally:
        east.backend.fail_with = None


async def test_calls_from_across_the_cluster_boundary_are_refused(east):
    plane = east.plane
    secret = (plane.config.data_dir / "control" / "forward.secret").read_text().strip()
    forwarded = {"x-isthmus-peer-identity": "spiffe://mesh.example/cluster/west-1/gateway",
                 "x-isthmus-forward-secret": secret}  # fmt: skip
    async with api(east) as client:
        before = await revision(east)
        response = await client.put("/checkout.shop/routes", json={"rules": CANARY}, headers=forwarded)
        assert response.status_code == 403
        assert response.json()["error"] == "operator calls are not accepted across clusters"
    context = tls.client_context(None, east.pki.bundle, alpn=("http/1.1",))
    async with httpx.AsyncClient(base_url=f"https://{plane.federation_address}", verify=context, timeout=5,
                                 trust_env=False) as client:  # fmt: skip
        response = await client.request("DELETE", "/v1/services/checkout.shop/policy")
        assert response.status_code == 403
        assert response.json()["error"] == "operator calls are not accepted across clusters"
    assert await revision(east) == before


async def test_a_rule_written_through_the_api_changes_what_the_gateway_answers(east, nursery):
    http_port = await serve_hypercorn(nursery, "127.0.0.1")
    store = Store(east.backend)
    await store.register_endpoints(Service.from_key("echo.demo"), [
        Endpoint("echo.demo", "east-1", "127.0.0.1", http_port, LOC, labels={"version": "v1"})])  # fmt: skip
    gateway = await east.start_gateway()
    host, port = gateway.addresses["outbound"]
    rules = [{"name": "tag", "match": {"path_prefix": "/headers"}, "request_headers": {"set": {"x-env": "api"}},
              "response_headers": {"add": {"x-route": "tag"}}}]  # fmt: skip
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=5, trust_env=False) as client:

        async def answer(until=lambda response: True) -> httpx.Response:
            """The gateway's answer to GET /headers for echo.demo, once `until` holds for it."""
            with trio.fail_after(15):
                while True:
                    response = await client.get("/headers", headers={"host": "echo.demo"})
                    if response.status_code == 200 and until(response):
                        return response
                    await trio.sleep(0.05)

        assert "x-route" not in (await answer()).headers
        async with api(east) as control:
            assert (await control.put("/echo.demo/routes", json={"rules": rules})).status_code == 200
        response = await answer(lambda response: "x-route" in response.headers)
        assert response.headers["x-route"] == "tag"
        assert ["x-env", "api"] in response.json()["headers"]
        async with api(east) as control:
            assert (await control.delete("/echo.demo/routes")).json()["removed"] is True
        await answer(lambda response: "x-route" not in response.headers)
