"""Peering tokens: a good token verifies; every bad token is refused with its own one-line reason."""

from __future__ import annotations

import base64
import json
import random

import pytest
from cryptography.hazmat.primitives import serialization

from federation import peering
from federation.peering import TokenLedger, TokenRejected, issue_token, record_issued, redeem, verify_token
from tests.unit.federation.fakepki import make_cluster_ca, make_root

NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def pki():
    root = make_root()
    return {"root": root, "east-1": make_cluster_ca(root, "east-1"), "west-1": make_cluster_ca(root, "west-1")}


def make_token(pki, *, peer="west-1", ttl_s=900.0, now=NOW, signer="east-1", cluster="east-1", seed=1):
    ca = pki[signer]
    return issue_token(
        cluster=cluster,
        region="us-east",
        zones=("us-east-1a", "us-east-1b"),
        gateway="127.0.1.1:15443",
        control="127.0.1.1:15011",
        trust_domain="mesh.example",
        bundle_pem=pki["root"].pem,
        signer_pem=ca.pem,
        signer_key=ca.key,
        peer=peer,
        ttl_s=ttl_s,
        now=now,
        rng=random.Random(seed),
    )


def reason_of(text, *, expect_peer="west-1", now=NOW + 10):
    with pytest.raises(TokenRejected) as info:
        verify_token(text, expect_peer=expect_peer, now=now)
    message = str(info.value)
    assert "\n" not in message
    return info.value.reason, message


def test_a_good_token_verifies_and_says_who_issued_it(pki):
    text, issued = make_token(pki)
    token = verify_token(text, expect_peer="west-1", now=NOW + 10)
    assert token == issued
    assert (token.cluster, token.region, token.zones) == ("east-1", "us-east", ("us-east-1a", "us-east-1b"))
    assert token.gateway == "127.0.1.1:15443" and token.control == "127.0.1.1:15011"
    assert token.expires_at == NOW + 900
    assert "\n" not in text and "=" not in text
    assert peering.root_fingerprints(token.bundle_pem)[0].count(":") == 31


def test_tokens_carry_a_fresh_secret_each_time(pki):
    a, _ = make_token(pki, seed=1)
    b, _ = make_token(pki, seed=2)
    assert verify_token(a, expect_peer="west-1", now=NOW).secret != verify_token(b, expect_peer="west-1", now=NOW).secret


@pytest.mark.parametrize(
    "text",
    ["", "abc", "a.b.c", "!!!.???", base64.urlsafe_b64encode(b"not json").decode().rstrip("=") + ".AAAA"],
)
def test_malformed_tokens_are_refused(text):
    reason, message = reason_of(text)
    assert reason == "malformed"
    assert message.startswith("peering token rejected (malformed): ")


def test_a_token_missing_a_field_is_malformed(pki):
    text, _ = make_token(pki)
    body = json.loads(base64.urlsafe_b64decode(text.split(".")[0] + "=="))
    del body["exp"]
    part = base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")
    reason, message = reason_of(f"{part}.{text.split('.')[1]}")
    assert reason == "malformed" and "'exp'" in message


def test_a_token_whose_contents_were_changed_is_tampered(pki):
    text, _ = make_token(pki)
    body = json.loads(base64.urlsafe_b64decode(text.split(".")[0] + "=="))
    body["gateway"] = "127.9.9.9:15443"  # an attacker redirects the link
    part = base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")
    reason, message = reason_of(f"{part}.{text.split('.')[1]}")
    assert reason == "tampered"
    assert "signature" in message


def test_a_token_signed_by_another_clusters_ca_is_tampered(pki):
    # west-1's CA signs a token claiming to come from east-1.
    text, _ = make_token(pki, signer="west-1", cluster="east-1", peer="east-2")
    reason, message = reason_of(text, expect_peer="east-2")
    assert reason == "tampered" and "east-1" in message


def test_a_signer_outside_the_carried_bundle_is_untrusted(pki):
    other_root = make_root("another root")
    rogue = make_cluster_ca(other_root, "east-1")
    text, _ = issue_token(
        cluster="east-1", region="us-east", zones=("us-east-1a",), gateway="127.0.1.1:15443",
        control="127.0.1.1:15011", trust_domain="mesh.example", bundle_pem=pki["root"].pem,
        signer_pem=rogue.pem, signer_key=rogue.key, peer="west-1", ttl_s=60, now=NOW, rng=random.Random(3),
    )  # fmt: skip
    assert reason_of(text)[0] == "untrusted"


def test_a_token_for_another_cluster_is_refused(pki):
    text, _ = make_token(pki, peer="east-2")
    reason, message = reason_of(text, expect_peer="west-1")
    assert reason == "wrong-cluster"
    assert message == "peering token rejected (wrong-cluster): the token is for cluster 'east-2', and this cluster is 'west-1'"


def test_an_expired_token_is_refused_with_when(pki):
    text, _ = make_token(pki, ttl_s=60)
    reason, message = reason_of(text, now=NOW + 61)
    assert reason == "expired"
    assert "expired at 2027-01-15T08:01:00Z" in message


def test_the_issuer_redeems_a_secret_once(pki):
    _, token = make_token(pki)
    ledger = record_issued({}, token, now=NOW)
    spent = redeem(ledger, secret=token.secret, peer="west-1", now=NOW + 5)
    with pytest.raises(TokenRejected) as info:
        redeem(spent, secret=token.secret, peer="west-1", now=NOW + 6)
    assert info.value.reason == "replayed"
    assert "single use" in str(info.value)


def test_the_issuer_refuses_unknown_expired_and_misdirected_secrets(pki):
    _, token = make_token(pki, ttl_s=60)
    ledger = record_issued({}, token, now=NOW)
    cases = [
        (dict(secret="never-issued", peer="west-1", now=NOW), "unknown-secret"),
        (dict(secret=token.secret, peer="east-2", now=NOW), "wrong-cluster"),
        (dict(secret=token.secret, peer="west-1", now=NOW + 60), "expired"),
    ]
    for kwargs, reason in cases:
        with pytest.raises(TokenRejected) as info:
            redeem(ledger, **kwargs)
        assert info.value.reason == reason


def test_the_ledger_survives_a_restart_and_keeps_secrets_hashed(pki, tmp_path):
    _, token = make_token(pki)
    ledger_file = TokenLedger(tmp_path)
    ledger_file.save(redeem(record_issued({}, token, now=NOW), secret=token.secret, peer="west-1", now=NOW))
    assert token.secret not in ledger_file.path.read_text()
    assert ledger_file.path.stat().st_mode & 0o077 == 0
    with pytest.raises(TokenRejected) as info:
        redeem(TokenLedger(tmp_path).load(), secret=token.secret, peer="west-1", now=NOW + 1)
    assert info.value.reason == "replayed"


def test_load_signer_names_the_missing_file(tmp_path):
    with pytest.raises(peering.PeeringError) as info:
        peering.load_signer(tmp_path, "east-1")
    assert str(info.value) == f"{tmp_path}/clusters/east-1/ca.crt: missing (create the cluster CA with `isthmus certs`)"


def test_load_signer_reads_the_cluster_ca_layout(pki, tmp_path):
    ca_dir = tmp_path / "clusters" / "east-1"
    ca_dir.mkdir(parents=True)
    (ca_dir / "ca.crt").write_text(pki["east-1"].pem)
    key_pem = pki["east-1"].key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (ca_dir / "ca.key").write_bytes(key_pem)
    (tmp_path / "bundle.pem").write_text(pki["root"].pem)
    signer = peering.load_signer(tmp_path, "east-1")
    text, _ = issue_token(
        cluster="east-1", region="us-east", zones=("us-east-1a",), gateway="127.0.1.1:15443",
        control="127.0.1.1:15011", trust_domain="mesh.example", bundle_pem=signer.bundle_pem,
        signer_pem=signer.cert_pem, signer_key=signer.key, peer="west-1", ttl_s=60, now=NOW, rng=random.Random(4),
    )  # fmt: skip
    assert verify_token(text, expect_peer="west-1", now=NOW).cluster == "east-1"


@pytest.mark.parametrize(("text", "seconds"), [("15m", 900), ("90s", 90), ("2h", 7200), ("1d", 86400), ("30", 30)])
def test_ttl_parsing(text, seconds):
    assert peering.parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["soon", "0s", "8d", "-5m"])
def test_bad_ttls_are_one_line_errors(text):
    with pytest.raises(peering.PeeringError, match="^--ttl: "):
        peering.parse_ttl(text)
