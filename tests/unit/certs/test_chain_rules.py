"""The mesh's chain rules (offline), the renewal deadline, and handshake-error reasons."""

from __future__ import annotations

import datetime as dt
import ssl

import pytest
import trio

from certs import files, pki
from certs.chain import check_peer_chain, verify_chain
from certs.errors import IdentityRejected
from certs.rotation import renew_at
from certs.testing import make_pki
from certs.tls import classify_handshake_error


def now() -> dt.datetime:
    """The time of the check (not of the import: the suite may reach these tests minutes later)."""
    return dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def chain_of(identity):
    return files.load_certificates(identity.chain_path)


def test_good_chain_verifies_offline(demo):
    report = verify_chain(chain_of(demo.identity("east-1")), demo.bundle.roots, now())
    assert report.ok, report.detail
    assert str(report.spiffe_id) == "spiffe://mesh.example/cluster/east-1/gateway"
    assert len(report.path) == 3


def test_leaf_from_east_1_claiming_west_1_breaks_the_cluster_rule(demo):
    forged = demo.forge("w", issuer_cluster="east-1", uris=["spiffe://mesh.example/cluster/west-1/gateway"])
    with pytest.raises(IdentityRejected) as rejected:
        check_peer_chain(chain_of(forged))
    assert rejected.value.reason == "cluster-mismatch"
    assert "may only issue identities under spiffe://mesh.example/cluster/east-1/" in rejected.value.detail
    report = verify_chain(chain_of(forged), demo.bundle.roots, now())
    assert not report.ok and report.detail.startswith("cluster-mismatch")


def test_a_cluster_name_prefix_is_not_its_subtree(demo):
    forged = demo.forge(
        "prefix", issuer_cluster="east-1", uris=["spiffe://mesh.example/cluster/east-10/gateway"]
    )
    with pytest.raises(IdentityRejected, match="cluster-mismatch"):
        check_peer_chain(chain_of(forged))


@pytest.mark.parametrize(
    ("uris", "ca", "reason"),
    [
        (
            ["spiffe://mesh.example/cluster/east-1/a", "spiffe://mesh.example/cluster/east-1/b"],
            False,
            "several-uris",
        ),
        ([], False, "no-spiffe-id"),
        (["spiffe://mesh.example/cluster/east-1/sneaky"], True, "ca-as-leaf"),
        (["spiffe://mesh.example/cluster/east-1"], False, "cluster-mismatch"),
    ],
)
def test_leaf_rules(demo, uris, ca, reason):
    out = pki.forge_identity(
        demo.dir / "forged" / f"rule-{reason}", issuer=demo.cluster_ca("east-1"), uris=uris, ca=ca
    )
    with pytest.raises(IdentityRejected) as rejected:
        check_peer_chain(files.load_certificates(out / "chain.pem"))
    assert rejected.value.reason == reason


def test_leaf_signed_by_the_root_itself_has_no_cluster_ca(demo):
    forged = demo.forge("root-leaf", issuer_cluster=None, uris=["spiffe://mesh.example/cluster/east-1/x"])
    root = demo.root_ca().cert
    with pytest.raises(IdentityRejected) as rejected:
        check_peer_chain([forged.certificate, root])
    assert rejected.value.reason == "no-cluster-ca"


def test_offline_verification_names_each_failure(demo, tmp_path):
    other = make_pki(tmp_path / "o", clusters={"east-1": ("us-east", "us-east-1a")})
    report = verify_chain(chain_of(other.identity("east-1")), demo.bundle.roots, now())
    assert not report.ok and "unknown CA" in report.detail
    later = now() + dt.timedelta(days=2)
    report = verify_chain(chain_of(demo.identity("east-1")), demo.bundle.roots, later)
    assert not report.ok and "expired on" in report.detail
    report = verify_chain(chain_of(demo.identity("east-1")), demo.bundle.roots, now() - dt.timedelta(days=1))
    assert not report.ok and "is not valid before" in report.detail
    foreign = demo.forge(
        "td", issuer_cluster="east-1", uris=["spiffe://other.example/cluster/east-1/gateway"]
    )
    report = verify_chain(chain_of(foreign), demo.bundle.roots, now())
    assert not report.ok and "outside" in report.detail and "name constraint (mesh.example)" in report.detail


def test_renew_at_two_thirds_of_the_lifetime():
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert renew_at(start, start + dt.timedelta(hours=24)) == start + dt.timedelta(hours=16)
    assert renew_at(start, start + dt.timedelta(hours=3)) == start + dt.timedelta(hours=2)
    assert renew_at(start, start) == start


def verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(
        1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}"
    )
    exc.verify_code = code
    exc.verify_message = message
    exc.reason = "CERTIFICATE_VERIFY_FAILED"
    return exc


def alert(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower().replace('_', ' ')}")
    exc.reason = reason
    return exc


@pytest.mark.parametrize(
    ("exc", "slug"),
    [
        (verify_error(20, "unable to get local issuer certificate"), "unknown-ca"),
        (verify_error(10, "certificate has expired"), "expired"),
        (verify_error(9, "certificate is not yet valid"), "not-yet-valid"),
        (verify_error(47, "permitted subtree violation"), "name-constraint"),
        (verify_error(26, "unsuitable certificate purpose"), "wrong-purpose"),
        (alert("PEER_DID_NOT_RETURN_A_CERTIFICATE"), "no-client-cert"),
        (alert("TLSV13_ALERT_CERTIFICATE_REQUIRED"), "no-client-cert"),
        (alert("TLSV1_ALERT_UNKNOWN_CA"), "unknown-ca"),
        (alert("SSLV3_ALERT_CERTIFICATE_EXPIRED"), "expired"),
        (alert("SSLV3_ALERT_BAD_CERTIFICATE"), "bad-certificate"),
        (alert("SOMETHING_NEW"), "handshake-failed"),
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), "connection-closed"),
        (IdentityRejected("cluster-mismatch", "x"), "cluster-mismatch"),
        (ConnectionResetError(104, "reset"), "connection-closed"),
    ],
)
def test_classify_handshake_error(exc, slug):
    assert classify_handshake_error(exc) == slug


def test_classify_looks_inside_trio_wrappers():
    try:
        try:
            raise verify_error(10, "certificate has expired")
        except ssl.SSLError as inner:
            raise trio.BrokenResourceError from inner
    except trio.BrokenResourceError as outer:
        assert classify_handshake_error(outer) == "expired"
