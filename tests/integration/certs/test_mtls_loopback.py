"""Real mutual TLS on loopback under trio: good peers meet, bad ones are refused with a clear reason.

One server per test module keeps serving: after every refused client, a good client still
gets its greeting.
"""

from __future__ import annotations

import datetime as dt

import pytest
import trio

from certs.errors import IdentityRejected
from certs.spiffe import workload_id
from certs.testing import make_pki
from certs.tls import classify_handshake_error, client_context, peer_identity, server_context

from .mtls_harness import GreetingServer, open_client, read_line


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"), identities=("gateway", "control"))


@pytest.fixture(scope="module")
def stranger_pki(tmp_path_factory):
    """Another PKI with the same trust domain name: its root is not in our bundle."""
    return make_pki(tmp_path_factory.mktemp("stranger"), clusters={"east-1": ("us-east", "us-east-1a")})


@pytest.fixture(scope="module")
def other_domain_pki(tmp_path_factory):
    return make_pki(
        tmp_path_factory.mktemp("other"),
        trust_domain="other.example",
        clusters={"east-1": ("us-east", "us-east-1a")},
    )


@pytest.fixture
async def server(pki, nursery):
    server = GreetingServer(lambda: pki.server_context("west-1"))
    await nursery.start(server.serve)
    return server


async def assert_still_serving(server, pki):
    """A good client right after a refused one still gets its greeting."""
    stream = await open_client(server.port, pki.client_context("east-2"))
    assert await read_line(stream) == f"hello {pki.spiffe_id('east-2')}\n".encode()
    await stream.aclose()
    assert await server.next_outcome() == ("ok", pki.spiffe_id("east-2"))


async def test_good_pair_each_side_sees_the_other(server, pki):
    stream = await open_client(server.port, pki.client_context("east-1"))
    assert peer_identity(stream) == workload_id("mesh.example", "west-1", "gateway")
    assert stream.selected_alpn_protocol() == "h2"
    assert stream.version() == "TLSv1.3"
    assert await read_line(stream) == b"hello spiffe://mesh.example/cluster/east-1/gateway\n"
    await stream.send_all(b"ping\n")
    assert await read_line(stream) == b"ping\n"
    await stream.aclose()
    assert await server.next_outcome() == ("ok", pki.spiffe_id("east-1"))


async def refused(server, pki, context) -> tuple[str, str]:
    """Connect with `context`; the server must refuse. Returns the server's (reason, message)."""
    try:
        stream = await open_client(server.port, context)
    except trio.BrokenResourceError:
        pass
    else:
        # TLS 1.3: the client finishes first, then learns of the refusal on its first read.
        with pytest.raises(trio.BrokenResourceError):
            line = await read_line(stream)
            if line == b"":
                raise trio.BrokenResourceError("closed by the server")
            pytest.fail(f"the server answered a client it should refuse: {line!r}")
        await trio.aclose_forcefully(stream)
    outcome = await server.next_outcome()
    assert outcome[0] == "refused", outcome
    await assert_still_serving(server, pki)
    return outcome[1], outcome[2]


async def test_unknown_ca_is_refused(server, pki, stranger_pki):
    reason, message = await refused(server, pki, client_context(stranger_pki.identity("east-1"), pki.bundle))
    assert reason == "unknown-ca"
    assert "unable to get local issuer certificate" in message


async def test_expired_leaf_is_refused(server, pki):
    now = dt.datetime.now(dt.UTC)
    expired = pki.issue("east-1", "expired", not_before=now - dt.timedelta(hours=48), hours=1)
    reason, message = await refused(server, pki, client_context(expired, pki.bundle))
    assert reason == "expired"
    assert "certificate has expired" in message


async def test_not_yet_valid_leaf_is_refused(server, pki):
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    early = pki.issue("east-1", "early", not_before=later, hours=24)
    reason, message = await refused(server, pki, client_context(early, pki.bundle))
    assert reason == "not-yet-valid"
    assert "certificate is not yet valid" in message


async def test_east_1_leaf_claiming_west_1_identity_is_refused(server, pki):
    impostor = pki.forge("impostor", issuer_cluster="east-1", uris=[str(pki.spiffe_id("west-1", "control"))])
    reason, message = await refused(server, pki, client_context(impostor, pki.bundle))
    assert reason == "cluster-mismatch"
    assert "spiffe://mesh.example/cluster/west-1/control was issued by cluster east-1's CA" in message


async def test_leaf_of_another_trust_domain_under_our_ca_breaks_the_name_constraint(server, pki):
    foreign = pki.forge(
        "foreign", issuer_cluster="east-1", uris=["spiffe://other.example/cluster/east-1/gateway"]
    )
    reason, message = await refused(server, pki, client_context(foreign, pki.bundle))
    assert reason == "name-constraint"
    assert "permitted subtree violation" in message


async def test_leaf_from_another_trust_domains_pki_is_refused(server, pki, other_domain_pki):
    reason, _ = await refused(server, pki, client_context(other_domain_pki.identity("east-1"), pki.bundle))
    assert reason == "unknown-ca"


async def test_no_client_certificate_is_refused(server, pki):
    reason, message = await refused(server, pki, client_context(None, pki.bundle))
    assert reason == "no-client-cert"
    assert "peer did not return a certificate" in message


async def test_cluster_ca_presented_as_a_leaf_is_refused_by_openssl(server, pki):
    from certs.store import load_identity_files

    ca = pki.cluster_ca("east-1")
    as_leaf = load_identity_files(ca.cert_path, ca.key_path, ca.cert_path)
    reason, message = await refused(server, pki, client_context(as_leaf, pki.bundle))
    assert reason == "wrong-purpose"
    assert "unsuitable certificate purpose" in message


async def test_ca_certificate_usable_for_tls_is_refused_by_the_mesh_rule(server, pki):
    # A CA certificate that OpenSSL would accept as an end entity (digitalSignature, EKU):
    # only Isthmus's own post-handshake check stops it.
    sneaky = pki.forge(
        "sneaky-ca",
        issuer_cluster="east-1",
        uris=[str(pki.spiffe_id("east-1", "sneaky"))],
        ca=True,
        key_usage="leaf",
        extended_key_usage=True,
    )
    reason, message = await refused(server, pki, client_context(sneaky, pki.bundle))
    assert reason == "ca-as-leaf"
    assert "is a CA certificate presented as a leaf" in message


async def test_client_refuses_a_server_whose_leaf_breaks_the_cluster_rule(pki, nursery):
    impostor = pki.forge("server-impostor", issuer_cluster="east-2", uris=[str(pki.spiffe_id("west-1"))])
    server = GreetingServer(lambda: server_context(impostor, pki.bundle))
    await nursery.start(server.serve)
    stream = await open_client(server.port, pki.client_context("east-1"))
    with pytest.raises(IdentityRejected) as rejected:
        peer_identity(stream)
    assert rejected.value.reason == "cluster-mismatch"
    assert classify_handshake_error(rejected.value) == "cluster-mismatch"
    await stream.aclose()


async def test_client_refuses_a_server_from_an_unknown_ca(pki, stranger_pki, nursery):
    server = GreetingServer(lambda: stranger_pki.server_context("east-1"))
    await nursery.start(server.serve)
    with pytest.raises(trio.BrokenResourceError) as broken:
        await open_client(server.port, pki.client_context("east-1"))
    assert classify_handshake_error(broken.value) == "unknown-ca"


async def test_peer_identity_without_get_verified_chain(server, pki, monkeypatch):
    """Where Python offers no verified chain, the rule still holds using the chain the peer sent."""
    import certs.tls

    monkeypatch.setattr(certs.tls, "_CHAIN_METHODS", ())
    stream = await open_client(server.port, pki.client_context("east-1"))
    assert peer_identity(stream) == pki.spiffe_id("west-1")
    await stream.aclose()
    assert await server.next_outcome() == ("ok", pki.spiffe_id("east-1"))
    impostor = pki.forge("fallback", issuer_cluster="east-1", uris=[str(pki.spiffe_id("west-1", "x"))])
    reason, _ = await refused(server, pki, client_context(impostor, pki.bundle))
    assert reason == "cluster-mismatch"


async def test_root_rotation_old_and_new_roots_both_trusted(tmp_path, nursery):
    """During a root rotation the bundle holds both roots: a cluster already moved to the new root
    and one still under the old root meet in both directions."""
    from certs import files
    from certs import pki as certs_pki
    from certs.store import bundle_from_pem, load_bundle

    rotating = make_pki(
        tmp_path, clusters={"east-1": ("us-east", "us-east-1a"), "west-1": ("eu-west", "eu-west-1a")}
    )
    certs_pki.init_root(rotating.dir, "mesh.example", force=True)
    certs_pki.create_cluster_ca(rotating.dir, "west-1", region="eu-west", zone="eu-west-1a", force=True)
    certs_pki.issue_identity(rotating.dir, "west-1", "gateway")
    bundle = load_bundle(rotating.dir)
    assert len(bundle.roots) == 2

    moved, stayed = rotating.identity("west-1"), rotating.identity("east-1")
    server = GreetingServer(lambda: server_context(moved, bundle))
    await nursery.start(server.serve)
    stream = await open_client(server.port, client_context(stayed, bundle))
    assert peer_identity(stream) == moved.spiffe_id
    assert await read_line(stream) == f"hello {stayed.spiffe_id}\n".encode()
    await stream.aclose()

    # A peer that only knows the new root refuses the cluster still under the old one.
    new_only = bundle_from_pem(files.cert_pem(bundle.roots[0]), "new root only")
    strict = GreetingServer(lambda: server_context(moved, new_only))
    await nursery.start(strict.serve)
    try:
        refused_stream = await open_client(strict.port, client_context(stayed, bundle))
        line = await read_line(refused_stream)
    except trio.BrokenResourceError:
        line = b""
    assert line == b""
    assert (await strict.next_outcome())[1] == "unknown-ca"
