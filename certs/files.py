"""The PKI directory on disk: its layout, atomic writes, and reading PEM with one-line errors.

Layout under a PKI directory (directories 0700, private keys 0600)::

    root/ca.crt  root/ca.key  bundle.pem
    clusters/<cluster>/ca.crt  ca.key  cluster.json
    clusters/<cluster>/identities/<name>/key.pem  cert.pem  chain.pem

Every file is written to a temporary file in its directory and renamed into place, so a
reader sees the old file or the new one, never half of one. Imports only `certs.errors`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certs.errors import FileUnreadable, KeyMismatch, PemInvalid, PkiMissing

DIR_MODE = 0o700
KEY_MODE = 0o600
PUBLIC_MODE = 0o644

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def root_dir(pki_dir: Path) -> Path:
    return Path(pki_dir) / "root"


def bundle_path(pki_dir: Path) -> Path:
    return Path(pki_dir) / "bundle.pem"


def cluster_dir(pki_dir: Path, cluster: str) -> Path:
    return Path(pki_dir) / "clusters" / cluster


def identity_dir(pki_dir: Path, cluster: str, name: str) -> Path:
    return cluster_dir(pki_dir, cluster) / "identities" / name


def ensure_dir(path: Path) -> None:
    """Create `path` and its missing parents with mode 0700."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        directory.mkdir(mode=DIR_MODE, exist_ok=True)
        os.chmod(directory, DIR_MODE)


def stage(path: Path, data: bytes, mode: int) -> Path:
    """Write `data` to a temporary file beside `path` (mode `mode`, synced); return its name."""
    path = Path(path)
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def write_files(files: Iterable[tuple[Path, bytes, int]]) -> list[Path]:
    """Write several files: stage them all first, then rename each into place.

    If staging any one fails, none is renamed and the staged files are removed.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data, mode in files:
            staged.append((stage(path, data, mode), Path(path)))
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    for tmp, path in staged:
        tmp.replace(path)
    return [path for _, path in staged]


def read_bytes(path: Path, what: str) -> bytes:
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PkiMissing(f"{path}: no such file ({what})") from None
    except IsADirectoryError:
        raise FileUnreadable(f"{path}: is a directory, not a file ({what})") from None
    except OSError as exc:
        raise FileUnreadable(f"{path}: cannot read {what}: {exc.strerror}") from None


def parse_certificates(data: bytes, source: str, what: str = "certificate") -> list[x509.Certificate]:
    """Every certificate in a PEM text; `PemInvalid` naming `source` when there is none or one is broken."""
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise PemInvalid(f"{source}: not a PEM {what} (no 'BEGIN CERTIFICATE' block)")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise PemInvalid(f"{source}: malformed PEM {what}: {_first_line(exc)}") from None


def load_certificates(path: Path, what: str = "certificate") -> list[x509.Certificate]:
    return parse_certificates(read_bytes(path, what), str(path), what)


def load_certificate(path: Path, what: str = "certificate") -> x509.Certificate:
    return load_certificates(path, what)[0]


def load_private_key(path: Path, what: str = "private key") -> PrivateKey:
    data = read_bytes(path, what)
    if b"PRIVATE KEY-----" not in data:
        raise PemInvalid(f"{path}: not a PEM {what} (no 'BEGIN ... PRIVATE KEY' block)")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise PemInvalid(f"{path}: {what} is encrypted; Isthmus needs it unencrypted (mode 0600)") from None
    except ValueError as exc:
        raise PemInvalid(f"{path}: malformed PEM {what}: {_first_line(exc)}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PemInvalid(f"{path}: {what} is {type(key).__name__}; Isthmus uses ECDSA or RSA keys")
    return key


def check_key_matches(key: PrivateKey, cert: x509.Certificate, key_path: Path, cert_path: Path) -> None:
    """Raise `KeyMismatch` unless `key` is the private half of `cert`'s public key."""
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    ours = key.public_key().public_bytes(serialization.Encoding.DER, spki)
    theirs = cert.public_key().public_bytes(serialization.Encoding.DER, spki)
    if ours != theirs:
        raise KeyMismatch(f"{key_path}: this private key does not match the certificate {cert_path}")


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
