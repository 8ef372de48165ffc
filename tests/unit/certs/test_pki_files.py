"""The PKI on disk: what each certificate says, file modes, refusals, and nothing half-written."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs import files, pki
from certs.chain import spiffe_ids_of
from certs.errors import (
    FileUnreadable,
    InvalidCertificate,
    InvalidSpiffeId,
    InvalidTrustDomain,
    KeyMismatch,
    PemInvalid,
    PkiExists,
    PkiMissing,
    UnknownCluster,
    UnknownIdentity,
)
from certs.store import load_bundle, load_identity
from certs.testing import make_pki


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def snapshot(directory):
    return {p: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_root_is_name_constrained_to_the_trust_domain(demo):
    root = pki.load_root(demo.dir).cert
    constraints = root.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    assert constraints.value.permitted_subtrees == [x509.UniformResourceIdentifier("mesh.example")]
    basic = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca
    life = root.not_valid_after_utc - root.not_valid_before_utc
    assert dt.timedelta(days=3650) <= life <= dt.timedelta(days=3650, minutes=10)


def test_cluster_ca_has_path_length_0_and_its_cluster_id(demo):
    ca = pki.load_cluster_ca(demo.dir, "east-1")
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert [str(i) for i in spiffe_ids_of(ca.cert)] == ["spiffe://mesh.example/cluster/east-1"]
    assert ca.cert.extensions.get_extension_for_class(x509.NameConstraints).critical
    assert (ca.region, ca.zone) == ("us-east", "us-east-1a")
    assert ca.cert.issuer == pki.load_root(demo.dir).cert.subject


def test_leaf_is_a_24_hour_spiffe_identity_for_server_and_client(demo):
    identity = demo.identity("west-1")
    assert str(identity.spiffe_id) == "spiffe://mesh.example/cluster/west-1/gateway"
    assert identity.lifetime == dt.timedelta(hours=24)
    eku = identity.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    chain = files.load_certificates(identity.chain_path)
    assert chain == [identity.certificate, pki.load_cluster_ca(demo.dir, "west-1").cert]


def test_dns_names_on_request(tmp_path):
    made = make_pki(tmp_path, clusters={"east-1": ("us-east", "us-east-1a")}, identities=())
    identity = made.issue("east-1", "gateway", dns_names=["gw.east-1.mesh.example"], hours=2)
    assert identity.dns_names == ("gw.east-1.mesh.example",)
    assert identity.lifetime == dt.timedelta(hours=2)
    with pytest.raises(InvalidCertificate, match="DNS name 'bad name'"):
        made.issue("east-1", "gateway", dns_names=["bad name"])


def test_private_keys_0600_and_directories_0700(demo):
    for path in demo.dir.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir():
            assert mode == 0o700, path
        elif path.name.endswith((".key", "key.pem")):
            assert mode == 0o600, path
    assert not list(demo.dir.rglob("*.tmp"))


def test_rsa_root_on_request(tmp_path):
    ca = pki.init_root(tmp_path, "mesh.example", key_type="rsa", days=30)
    assert isinstance(ca.key, rsa.RSAPrivateKey) and ca.key.key_size == 3072
    cluster = pki.create_cluster_ca(tmp_path, "east-1", region="us-east", zone="us-east-1a")
    assert isinstance(cluster.key, rsa.RSAPrivateKey)
    # A cluster CA never outlives its root.
    assert cluster.cert.not_valid_after_utc <= ca.cert.not_valid_after_utc


def test_existing_root_is_not_replaced_without_force(demo):
    before = snapshot(demo.dir)
    with pytest.raises(PkiExists, match=r"root/ca\.crt: a root CA already exists; pass --force"):
        pki.init_root(demo.dir, "mesh.example")
    assert snapshot(demo.dir) == before


def test_force_replaces_the_root_and_keeps_the_old_one_in_the_bundle(tmp_path):
    old = pki.init_root(tmp_path, "mesh.example")
    new = pki.init_root(tmp_path, "mesh.example", force=True)
    assert new.cert != old.cert
    assert load_bundle(tmp_path).roots == (new.cert, old.cert)


def test_invalid_trust_domain_writes_nothing(tmp_path):
    target = tmp_path / "pki"
    with pytest.raises(InvalidTrustDomain, match="trust domain 'Mesh.Example'"):
        pki.init_root(target, "Mesh.Example")
    assert not target.exists()


def test_cluster_without_root_and_unknown_cluster(tmp_path):
    with pytest.raises(PkiMissing, match="no root CA here"):
        pki.create_cluster_ca(tmp_path, "east-1", region="us-east", zone="us-east-1a")
    made = make_pki(tmp_path / "pki", clusters={"east-1": ("us-east", "us-east-1a")}, identities=())
    with pytest.raises(UnknownCluster, match=r"cluster 'west-9': no cluster CA in .* \(known: east-1\)"):
        pki.issue_identity(made.dir, "west-9", "gateway")
    with pytest.raises(InvalidSpiffeId, match="cluster 'east 1'"):
        pki.create_cluster_ca(made.dir, "east 1", region="us-east", zone="us-east-1a")
    with pytest.raises(PkiExists, match="cluster 'east-1' already has a CA"):
        pki.create_cluster_ca(made.dir, "east-1", region="us-east", zone="us-east-1a")


def test_unknown_identity(demo):
    with pytest.raises(UnknownIdentity, match="identity 'nobody' of cluster 'east-1': nothing at"):
        load_identity(demo.dir, "east-1", "nobody")
    with pytest.raises(UnknownCluster, match="cluster 'south-1'"):
        load_identity(demo.dir, "south-1", "gateway")


def test_key_that_does_not_match_its_certificate(tmp_path):
    made = make_pki(tmp_path)
    east = files.identity_dir(made.dir, "east-1", "gateway")
    west = files.identity_dir(made.dir, "west-1", "gateway")
    (east / "key.pem").write_bytes((west / "key.pem").read_bytes())
    with pytest.raises(
        KeyMismatch, match=r"east-1/identities/gateway/key\.pem: this private key does not match"
    ):
        made.identity("east-1")


def test_malformed_and_unreadable_pem(tmp_path):
    made = make_pki(tmp_path, clusters={"east-1": ("us-east", "us-east-1a")})
    identity_dir = files.identity_dir(made.dir, "east-1", "gateway")
    cert = identity_dir / "cert.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    with pytest.raises(PemInvalid, match=r"cert\.pem: malformed PEM certificate"):
        made.identity("east-1")
    cert.write_text("hello\n")
    with pytest.raises(PemInvalid, match=r"cert\.pem: not a PEM certificate"):
        made.identity("east-1")
    cert.unlink()
    cert.mkdir()
    with pytest.raises(FileUnreadable, match=r"cert\.pem: is a directory"):
        made.identity("east-1")
    (identity_dir / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    cert.rmdir()
    pki.issue_identity(made.dir, "east-1", "gateway")  # a fresh issue repairs it
    assert made.identity("east-1").spiffe_id == made.spiffe_id("east-1")
    (made.dir / "bundle.pem").unlink()
    with pytest.raises(PkiMissing, match=r"bundle\.pem: no such file \(trust bundle\)"):
        load_bundle(made.dir)


def test_a_failed_write_leaves_the_old_files_whole(tmp_path, monkeypatch):
    made = make_pki(tmp_path, clusters={"east-1": ("us-east", "us-east-1a")})
    before = snapshot(made.dir)
    real_stage = files.stage
    calls = []

    def failing_stage(path, data, mode):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(path))
        return real_stage(path, data, mode)

    monkeypatch.setattr(files, "stage", failing_stage)
    with pytest.raises(OSError, match="No space left"):
        pki.issue_identity(made.dir, "east-1", "gateway")
    assert snapshot(made.dir) == before
    assert not [p for p in made.dir.rglob("*") if p.name.endswith(".tmp")]


def test_identity_not_before_lets_tests_make_expired_and_future_leaves(demo):
    past = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    expired = demo.issue("east-2", "old", not_before=past, hours=1)
    assert (expired.not_before, expired.not_after) == (past, past + dt.timedelta(hours=1))


def test_pure_modules_do_not_import_trio_or_other_packages():
    code = (
        "import sys, certs.spiffe, certs.chain, certs.pki, certs.store, certs.tls, certs.errors;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('trio', 'gateway', 'federation', 'registry')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert result.returncode == 0, result.stdout + result.stderr
