"""`isthmus certs ...` as a user runs it: the happy path, and one-line errors (exit 2) for bad input."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest


def isthmus(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "federation.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    line = result.stderr.strip()
    assert "\n" not in line, line
    assert line.startswith("isthmus: error: "), line
    for needle in needles:
        assert needle in line, line
    return line


def snapshot(directory: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A PKI made through the CLI: root, east-1 and west-1, an east-1 gateway."""
    directory = tmp_path_factory.mktemp("cli") / "pki"
    assert isthmus("certs", "init", "--trust-domain", "mesh.example", "--dir", str(directory)).returncode == 0
    for name, region, zone in (("east-1", "us-east", "us-east-1a"), ("west-1", "eu-west", "eu-west-1a")):
        assert (
            isthmus(
                "certs", "cluster", name, "--region", region, "--zone", zone, "--dir", str(directory)
            ).returncode
            == 0
        )
    assert (
        isthmus(
            "certs", "issue", "--cluster", "east-1", "--name", "gateway", "--dir", str(directory)
        ).returncode
        == 0
    )
    return directory


def test_happy_path_prints_what_it_wrote_where(tmp_path):
    directory = tmp_path / "pki"
    result = isthmus("certs", "init", "--trust-domain", "mesh.example", "--dir", str(directory))
    assert result.returncode == 0, result.stderr
    assert "root CA for trust domain mesh.example (ECDSA P-256" in result.stdout
    assert f"wrote {directory}/root/ca.key  (root CA private key, mode 0600)" in result.stdout
    assert f"wrote {directory}/bundle.pem" in result.stdout

    result = isthmus(
        "certs", "cluster", "east-1", "--region", "us-east", "--zone", "us-east-1a", "--dir", str(directory)
    )
    assert result.returncode == 0, result.stderr
    assert "cluster CA east-1 (us-east/us-east-1a): spiffe://mesh.example/cluster/east-1" in result.stdout
    assert f"wrote {directory}/clusters/east-1/ca.crt" in result.stdout

    result = isthmus(
        "certs",
        "issue",
        "--cluster",
        "east-1",
        "--name",
        "gateway",
        "--dns",
        "gw.east-1.mesh.example",
        "--hours",
        "12",
        "--dir",
        str(directory),
    )
    assert result.returncode == 0, result.stderr
    assert (
        "identity spiffe://mesh.example/cluster/east-1/gateway, DNS gw.east-1.mesh.example" in result.stdout
    )
    leaf_dir = directory / "clusters/east-1/identities/gateway"
    for name in ("key.pem", "cert.pem", "chain.pem"):
        assert f"wrote {leaf_dir}/{name}" in result.stdout
    assert stat.S_IMODE((leaf_dir / "key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(leaf_dir.stat().st_mode) == 0o700

    result = isthmus("certs", "inspect", str(leaf_dir / "cert.pem"))
    assert result.returncode == 0, result.stderr
    assert "SPIFFE ID  spiffe://mesh.example/cluster/east-1/gateway" in result.stdout
    assert "DNS SANs   gw.east-1.mesh.example" in result.stdout
    assert "days left  0.50" in result.stdout
    assert "chain      OK: verifies against the bundle" in result.stdout


def test_inspect_json_for_scripts(pki):
    result = isthmus("certs", "inspect", str(pki / "clusters/east-1/identities/gateway/chain.pem"), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["spiffe_id"] == "spiffe://mesh.example/cluster/east-1/gateway"
    assert info["issuer"] == "CN=Isthmus cluster CA east-1,OU=east-1,O=Isthmus"
    assert info["verifies"] is True
    assert info["certificates_in_file"] == 2
    assert 0.9 < info["days_left"] <= 1.0

    result = isthmus("certs", "inspect", str(pki / "clusters/west-1/ca.crt"), "--dir", str(pki), "--json")
    info = json.loads(result.stdout)
    assert info["is_ca"] and info["path_length"] == 0 and info["verifies"] is True


def test_inspect_says_when_a_chain_does_not_verify(pki, tmp_path):
    other = tmp_path / "other"
    isthmus("certs", "init", "--trust-domain", "mesh.example", "--dir", str(other))
    isthmus("certs", "cluster", "east-1", "--region", "us-east", "--zone", "us-east-1a", "--dir", str(other))
    isthmus("certs", "issue", "--cluster", "east-1", "--name", "gateway", "--dir", str(other))
    result = isthmus(
        "certs", "inspect", str(other / "clusters/east-1/identities/gateway/chain.pem"), "--dir", str(pki)
    )
    assert result.returncode == 1
    assert "chain      FAILS: no issuer in the chain or bundle" in result.stdout


def test_bundle_shows_and_adds_roots(pki, tmp_path):
    result = isthmus("certs", "bundle", "--dir", str(pki))
    assert result.returncode == 0
    assert "trust domain mesh.example, 1 root(s)" in result.stdout
    copy = tmp_path / "pki"
    shutil.copytree(pki, copy)
    rotated = tmp_path / "next"
    isthmus("certs", "init", "--trust-domain", "mesh.example", "--dir", str(rotated))
    result = isthmus("certs", "bundle", "--dir", str(copy), "--add", str(rotated / "root/ca.crt"))
    assert result.returncode == 0, result.stderr
    assert "added 1 root(s)" in result.stdout
    assert f"wrote {copy}/bundle.pem  (trust bundle, 2 root(s))" in result.stdout
    result = isthmus("certs", "bundle", "--dir", str(copy), "--json")
    assert len(json.loads(result.stdout)["roots"]) == 2


def test_dir_and_names_from_the_cluster_config(tmp_path):
    (tmp_path / "east-1.toml").write_text(
        'trust_domain = "corp.example"\n[cluster]\nname = "east-1"\nregion = "us-east"\n'
        'zones = ["us-east-1b"]\n[pki]\ndir = "mypki"\n'
    )
    config = str(tmp_path / "east-1.toml")
    assert isthmus("certs", "init", "--config", config).returncode == 0
    result = isthmus("certs", "cluster", "east-1", "--config", config)
    assert result.returncode == 0, result.stderr
    assert "cluster CA east-1 (us-east/us-east-1b): spiffe://corp.example/cluster/east-1" in result.stdout
    assert (tmp_path / "mypki/clusters/east-1/ca.crt").is_file()


# ---------------------------------------------------------------------------------------- bad input


def test_existing_root_without_force_changes_nothing(pki):
    before = snapshot(pki)
    result = isthmus("certs", "init", "--trust-domain", "mesh.example", "--dir", str(pki))
    assert_one_line_error(result, f"{pki}/root/ca.crt: a root CA already exists; pass --force to replace it")
    assert snapshot(pki) == before
    result = isthmus(
        "certs", "cluster", "east-1", "--region", "us-east", "--zone", "us-east-1a", "--dir", str(pki)
    )
    assert_one_line_error(result, "cluster 'east-1' already has a CA; pass --force")
    assert snapshot(pki) == before


@pytest.mark.parametrize(
    ("td", "why"),
    [
        ("Mesh.Example", "must be lower case"),
        ("mesh.example:8443", "cannot carry a port"),
        ("mesh example", "limited to"),
    ],
)
def test_invalid_trust_domain_writes_nothing(tmp_path, td, why):
    result = isthmus("certs", "init", "--trust-domain", td, "--dir", str(tmp_path / "pki"))
    assert_one_line_error(result, f"trust domain {td!r}", why)
    assert not (tmp_path / "pki").exists()


def test_unknown_cluster(pki):
    before = snapshot(pki)
    result = isthmus("certs", "issue", "--cluster", "west-9", "--name", "gateway", "--dir", str(pki))
    assert_one_line_error(result, "cluster 'west-9': no cluster CA in", "(known: east-1, west-1)")
    assert snapshot(pki) == before


def test_missing_and_unreadable_files(pki, tmp_path):
    assert_one_line_error(isthmus("certs", "inspect", str(tmp_path / "nope.pem")), "nope.pem: no such file")
    assert_one_line_error(isthmus("certs", "inspect", str(tmp_path)), f"{tmp_path}: is a directory")
    assert_one_line_error(
        isthmus(
            "certs", "cluster", "east-1", "--region", "r", "--zone", "z", "--dir", str(tmp_path / "empty")
        ),
        "no root CA here (run `isthmus certs init",
    )
    assert_one_line_error(isthmus("certs", "bundle", "--dir", str(tmp_path)), "bundle.pem: no such file")
    if os.geteuid() != 0:  # root reads files whatever their mode
        locked = tmp_path / "locked.pem"
        shutil.copy(pki / "root/ca.crt", locked)
        locked.chmod(0)
        assert_one_line_error(isthmus("certs", "inspect", str(locked)), "locked.pem: cannot read")


def test_malformed_pem(tmp_path, pki):
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n")
    assert_one_line_error(isthmus("certs", "inspect", str(junk)), f"{junk}: malformed PEM certificate")
    junk.write_text("hello\n")
    assert_one_line_error(isthmus("certs", "inspect", str(junk)), f"{junk}: not a PEM certificate")
    assert_one_line_error(
        isthmus("certs", "bundle", "--dir", str(pki), "--add", str(junk)),
        f"{junk}: not a PEM root CA certificate",
    )
    leaf = pki / "clusters/east-1/identities/gateway/cert.pem"
    assert_one_line_error(
        isthmus("certs", "bundle", "--dir", str(pki), "--add", str(leaf)), "is not a self-signed root CA"
    )


def test_key_that_does_not_match_its_certificate(pki, tmp_path):
    copy = tmp_path / "pki"
    shutil.copytree(pki, copy)
    shutil.copy(copy / "clusters/west-1/ca.key", copy / "clusters/east-1/ca.key")
    before = snapshot(copy)
    result = isthmus("certs", "issue", "--cluster", "east-1", "--name", "api", "--dir", str(copy))
    assert_one_line_error(
        result, f"{copy}/clusters/east-1/ca.key: this private key does not match the certificate"
    )
    assert snapshot(copy) == before
    (copy / "root/ca.key").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    result = isthmus(
        "certs", "cluster", "east-2", "--region", "us-east", "--zone", "us-east-1c", "--dir", str(copy)
    )
    assert_one_line_error(result, f"{copy}/root/ca.key: malformed PEM root CA key")
    assert not (copy / "clusters/east-2").exists()


def test_bad_names_and_numbers(pki):
    assert_one_line_error(
        isthmus("certs", "issue", "--cluster", "east-1", "--name", "../x", "--dir", str(pki)),
        "identity name '../x'",
    )
    assert_one_line_error(
        isthmus(
            "certs", "issue", "--cluster", "east-1", "--name", "gw", "--dns", "bad_host!", "--dir", str(pki)
        ),
        "DNS name 'bad_host!'",
    )
    result = isthmus(
        "certs", "issue", "--cluster", "east-1", "--name", "gw", "--hours", "-3", "--dir", str(pki)
    )
    assert result.returncode == 2 and "'-3' must be a positive number" in result.stderr
    assert_one_line_error(isthmus("certs", "bundle"), "--dir PKI (or --config CLUSTER.TOML) is needed")
