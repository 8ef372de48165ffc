"""Who may read what this cluster exports, and what is refused: through the east-west gateway
(the one crossing), on the peering bootstrap listener, and on the API itself."""

from __future__ import annotations

import httpx
import pytest

from certs import tls
from certs.testing import make_pki
from registry.model import Endpoint, Export, Locality, Peer, Service
from registry.store import Store
from registry.testing import FakeBackend
from tests.integration.crossing.support import CLUSTERS, Cluster, cluster_config, wait_for

SNI = {"sni_hostname": "federation.isthmus"}


@pytest.fixture
async def east(tmp_path, nursery):
    pki = make_pki(tmp_path / "pki", clusters=CLUSTERS)
    rogue = make_pki(tmp_path / "rogue", clusters={"west-1": CLUSTERS["west-1"]})
    cluster = await Cluster(nursery, cluster_config(tmp_path, "east-1", pki.dir), FakeBackend(), heartbeat_s=0.3).start()
    plane = cluster.plane
    store = Store(cluster.backend)
    loc = Locality("us-east", "us-east-1a")
    await store.register_endpoints(Service.from_key("echo.demo"), [Endpoint("echo.demo", "east-1", "127.0.1.10", 8080, loc)])
    await store.register_endpoints(Service.from_key("secret.demo"), [Endpoint("secret.demo", "east-1", "127.0.1.11", 8080, loc)])
    await store.set_export("east-1", Export("echo.demo", ("west-1",)))
    await store.put_peer("east-1", Peer("west-1", "eu-west", ("eu-west-1a",), "127.0.2.1:1", "127.0.2.1:1", pki.bundle.pem))
    await wait_for(lambda: "west-1" in plane._peer_records and plane.exports.view("west-1").services, "peer stored")
    return cluster, pki, rogue


def gateway(cluster, context):
    host, port = cluster.gateway.addresses["eastwest"]
    return httpx.AsyncClient(base_url=f"https://{host}:{port}", verify=context, timeout=5, trust_env=False,
                             headers={"host": "federation.isthmus"})


def bootstrap(plane, context):
    return httpx.AsyncClient(base_url=f"https://{plane.federation_address}", verify=context, timeout=5, trust_env=False)


async def test_a_linked_peer_reads_only_what_is_exported_to_it(east):
    cluster, pki, _ = east
    async with gateway(cluster, pki.client_context("west-1", alpn=("http/1.1",))) as client:
        response = await client.get("/v1/federation/export", params={"peer": "west-1"}, extensions=SNI)
        assert response.status_code == 200
        body = response.json()
        assert [s["name"] for s in body["services"]] == ["echo"]
        assert [e["address"] for e in body["endpoints"]] == ["127.0.1.10"]
        probe = (await client.get("/v1/federation/probe", extensions=SNI)).json()
        assert probe["identity"] == "spiffe://mesh.example/cluster/west-1/gateway"
        operator = await client.get("/v1/peers", extensions=SNI)
        assert operator.status_code == 404 and operator.headers["x-isthmus-reason"] == "federation-path-unknown"


async def test_an_unlinked_cluster_is_refused(east):
    cluster, pki, _ = east
    async with gateway(cluster, pki.client_context("east-2", alpn=("http/1.1",))) as client:
        response = await client.get("/v1/federation/export", params={"peer": "east-2"}, extensions=SNI)
    assert response.status_code == 403
    assert response.json()["error"] == "cluster east-2 is not linked with east-1"


async def test_the_bootstrap_listener_gives_nothing_but_the_redeem(east):
    cluster, pki, _ = east
    plane = cluster.plane
    for identity in (None, "west-1"):  # not even to a linked peer's verified identity
        context = pki.client_context(identity, alpn=("http/1.1",)) if identity else tls.client_context(None, pki.bundle, alpn=("http/1.1",))
        async with bootstrap(plane, context) as client:
            response = await client.get("/v1/federation/export", params={"peer": "west-1"})
            assert response.status_code == 403
            assert "through this cluster's east-west gateway" in response.json()["error"]
            operator = await client.get("/v1/peers")
            assert operator.status_code == 403 and "not accepted across clusters" in operator.json()["error"]
    async with bootstrap(plane, tls.client_context(None, pki.bundle, alpn=("http/1.1",))) as client:
        redeem = await client.post("/v1/federation/redeem", json={"secret": "guess", "cluster": "east-2", "region": "us-east",
                                   "zones": ["us-east-1c"], "gateway": "127.0.1.2:15443", "control": "127.0.1.2:1",
                                   "bundle": pki.bundle.pem})  # fmt: skip
        assert redeem.status_code == 409
        assert "(unknown-secret)" in redeem.json()["error"]
    assert "east-2" not in plane._peer_records


async def test_a_certificate_outside_the_trust_bundles_fails_the_bootstrap_handshake(east):
    cluster, _, rogue = east
    plane = cluster.plane
    async with bootstrap(plane, rogue.client_context("west-1", alpn=("http/1.1",))) as client:
        with pytest.raises(httpx.HTTPError):
            await client.get("/v1/federation/export", params={"peer": "west-1"})
    await wait_for(lambda: sum(plane.refused_crossings.values()) == 1, "refusal counted")
    assert set(plane.refused_crossings) <= {"unknown-ca", "bad-certificate", "connection-closed", "handshake-failed"}


@pytest.mark.parametrize(
    "identity_header",
    [("x-forwarded-client-cert", "URI=spiffe://mesh.example/cluster/west-1/gateway"),
     ("x-isthmus-peer-identity", "spiffe://mesh.example/cluster/west-1/gateway")],
)  # fmt: skip
async def test_forwarded_identities_need_the_forward_secret(east, identity_header):
    plane = east[0].plane
    headers = dict([identity_header])
    async with httpx.AsyncClient(base_url=f"http://{plane.config.control_api}", timeout=5, trust_env=False) as client:
        forged = await client.get("/v1/federation/export", params={"peer": "west-1"}, headers=headers)
        assert forged.status_code == 403
        assert forged.json()["error"] == "a forwarded identity without this cluster's forward secret"
        headers["x-isthmus-forward-secret"] = (plane.config.data_dir / "control" / "forward.secret").read_text().strip()
        forwarded = await client.get("/v1/federation/export", params={"peer": "west-1"}, headers=headers)
        assert forwarded.status_code == 200 and forwarded.json()["cluster"] == "east-1"
        direct = await client.get("/v1/federation/export", params={"peer": "west-1"})
        assert direct.status_code == 403 and "east-west gateway" in direct.json()["error"]
