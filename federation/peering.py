"""Peering tokens: how one cluster invites another to link with it.

`isthmus cluster token --for west-1` on `east-1` prints a token; `isthmus cluster register
--token ...` on `west-1` redeems it. The token carries everything the redeeming side needs to
reach and trust the issuer: the issuing cluster's name and locality, its east-west gateway and
control addresses, its trust domain and trust bundle, the name of the cluster it is meant for, a
one-time secret and an expiry. It is signed (ECDSA) with the issuing cluster's intermediate CA
key, and carries that CA's certificate, which must chain to a root of the bundle it carries.

Wire form: `<base64url(compact JSON)>.<base64url(DER signature over the first part)>`, no padding.

Verification is done in a fixed order so that each bad token gets exactly one, one-line reason
(`TokenRejected.reason`): `malformed` (not two base64url parts, not JSON, fields missing or of
the wrong type), `tampered` (the signature does not verify with the carried certificate, or the
certificate is not the issuing cluster's), `untrusted` (the certificate does not chain to the
carried bundle), `wrong-cluster` (meant for another cluster), `expired`, and, on the issuing
side only, `replayed` / `unknown-secret` (a secret already spent, or never issued here).

The token is not a secret channel: the operator carries it from one terminal to the other, and
`register` prints the root fingerprints so they can be compared with `isthmus certs` output.

Pure functions take `now` (seconds since the epoch) and a `random.Random`; the file functions
(`load_signer`, `TokenLedger`) only read and write files. This module must not import trio.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
import os
import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from federation.errors import FederationError

TOKEN_VERSION = 1
DEFAULT_TTL_S = 15 * 60.0
MAX_TTL_S = 7 * 24 * 3600.0
SECRET_BYTES = 24

REASONS = ("malformed", "tampered", "untrusted", "wrong-cluster", "expired", "replayed", "unknown-secret")


class PeeringError(FederationError):
    """Peering cannot proceed: a signer that cannot be loaded, a ledger that cannot be written."""


class TokenRejected(PeeringError):
    """A peering token that must not be used; `.reason` is one of `REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"peering token rejected ({reason}): {detail}")


@attrs.frozen
class PeeringToken:
    """What a token says, once verified."""

    cluster: str
    region: str
    zones: tuple[str, ...] = attrs.field(converter=tuple)
    gateway: str
    control: str
    trust_domain: str
    bundle_pem: str
    signer_pem: str
    peer: str  # the cluster the token is meant for
    secret: str
    issued_at: float
    expires_at: float


# --- encoding -------------------------------------------------------------------------------


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    if not text or any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" for c in text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def secret_digest(secret: str) -> str:
    """What the issuing side stores: never the secret itself."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, as `AB:CD:...` (what `openssl x509 -fingerprint -sha256` prints)."""
    digest = cert.fingerprint(hashes.SHA256())
    return ":".join(f"{b:02X}" for b in digest)


def bundle_certificates(bundle_pem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(bundle_pem.encode("ascii"))


def root_fingerprints(bundle_pem: str) -> list[str]:
    return [fingerprint(c) for c in bundle_certificates(bundle_pem)]


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_ttl(text: str) -> float:
    """`15m`, `2h`, `90s`, `1d` or a bare number of seconds into seconds (1 s to 7 days)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    raw = str(text).strip()
    scale = units.get(raw[-1:], None)
    number = raw[:-1] if scale else raw
    try:
        value = float(number) * (scale or 1)
    except ValueError:
        raise PeeringError(f"--ttl: {text!r} is not a duration (e.g. 90s, 15m, 2h, 1d)") from None
    if not 1 <= value <= MAX_TTL_S:
        raise PeeringError(f"--ttl: {text!r} is out of range (1s to 7d)")
    return value


# --- issuing ----------------------------------------------------------------------------------


def issue_token(
    *,
    cluster: str,
    region: str,
    zones: tuple[str, ...] | list[str],
    gateway: str,
    control: str,
    trust_domain: str,
    bundle_pem: str,
    signer_pem: str,
    signer_key: ec.EllipticCurvePrivateKey,
    peer: str,
    ttl_s: float,
    now: float,
    rng: random.Random,
) -> tuple[str, PeeringToken]:
    """A signed token for `peer`, and what it says (the caller records `secret_digest(token.secret)`)."""
    if not isinstance(signer_key, ec.EllipticCurvePrivateKey):
        raise PeeringError(f"cluster {cluster}: its CA key is not an ECDSA key; peering tokens are signed with ECDSA")
    token = PeeringToken(
        cluster=cluster,
        region=region,
        zones=tuple(zones),
        gateway=gateway,
        control=control,
        trust_domain=trust_domain,
        bundle_pem=bundle_pem,
        signer_pem=signer_pem,
        peer=peer,
        secret=_b64e(rng.randbytes(SECRET_BYTES)),
        issued_at=float(int(now)),
        expires_at=float(int(now + ttl_s)),
    )
    body = {
        "v": TOKEN_VERSION,
        "cluster": token.cluster,
        "region": token.region,
        "zones": list(token.zones),
        "gateway": token.gateway,
        "control": token.control,
        "td": token.trust_domain,
        "bundle": token.bundle_pem,
        "signer": token.signer_pem,
        "for": token.peer,
        "secret": token.secret,
        "iat": int(token.issued_at),
        "exp": int(token.expires_at),
    }
    payload = json.dumps(body, separators=(",", ":"), sort_keys=True).encode("utf-8")
    part = _b64e(payload)
    signature = signer_key.sign(part.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    return f"{part}.{_b64e(signature)}", token


# --- verifying --------------------------------------------------------------------------------

_FIELDS: Mapping[str, type | tuple[type, ...]] = {
    "v": int,
    "cluster": str,
    "region": str,
    "zones": list,
    "gateway": str,
    "control": str,
    "td": str,
    "bundle": str,
    "signer": str,
    "for": str,
    "secret": str,
    "iat": (int, float),
    "exp": (int, float),
}


def decode_token(text: str) -> tuple[PeeringToken, bytes, bytes]:
    """Parse without checking the signature: (what it says, the signed bytes, the signature)."""
    text = str(text).strip()
    parts = text.split(".")
    if len(parts) != 2:
        raise TokenRejected("malformed", f"expected two base64url parts separated by '.', found {len(parts)}")
    try:
        payload = _b64d(parts[0])
        signature = _b64d(parts[1])
    except (ValueError, binascii.Error):
        raise TokenRejected("malformed", "not base64url") from None
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TokenRejected("malformed", "the payload is not JSON") from None
    if not isinstance(body, dict):
        raise TokenRejected("malformed", "the payload is not a JSON object")
    for name, kind in _FIELDS.items():
        if name not in body:
            raise TokenRejected("malformed", f"field {name!r} is missing")
        if not isinstance(body[name], kind) or isinstance(body[name], bool):
            raise TokenRejected("malformed", f"field {name!r} has the wrong type")
    if body["v"] != TOKEN_VERSION:
        raise TokenRejected("malformed", f"token version {body['v']} is not supported (expected {TOKEN_VERSION})")
    if not all(isinstance(z, str) for z in body["zones"]):
        raise TokenRejected("malformed", "field 'zones' must be a list of strings")
    token = PeeringToken(
        cluster=body["cluster"],
        region=body["region"],
        zones=tuple(body["zones"]),
        gateway=body["gateway"],
        control=body["control"],
        trust_domain=body["td"],
        bundle_pem=body["bundle"],
        signer_pem=body["signer"],
        peer=body["for"],
        secret=body["secret"],
        issued_at=float(body["iat"]),
        expires_at=float(body["exp"]),
    )
    return token, parts[0].encode("ascii"), signature


def _spiffe_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def verify_token(text: str, *, expect_peer: str, now: float) -> PeeringToken:
    """Verify a token meant for cluster `expect_peer` at time `now`; raises `TokenRejected`."""
    token, signed, signature = decode_token(text)
    try:
        signer = x509.load_pem_x509_certificate(token.signer_pem.encode("ascii"))
        roots = bundle_certificates(token.bundle_pem)
    except ValueError:
        raise TokenRejected("malformed", "the carried certificate or trust bundle is not PEM") from None
    key = signer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise TokenRejected("tampered", "the carried certificate has no ECDSA key")
    try:
        key.verify(signature, signed, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise TokenRejected("tampered", "the signature does not match the token's contents") from None
    expected_id = f"spiffe://{token.trust_domain}/cluster/{token.cluster}"
    if expected_id not in _spiffe_uris(signer):
        raise TokenRejected("tampered", f"the signing certificate is not cluster {token.cluster}'s CA ({expected_id})")
    if not any(_issued_by(signer, root) for root in roots):
        raise TokenRejected("untrusted", "the signing certificate does not chain to the trust bundle the token carries")
    if token.peer != expect_peer:
        raise TokenRejected(
            "wrong-cluster", f"the token is for cluster {token.peer!r}, and this cluster is {expect_peer!r}"
        )
    if now >= token.expires_at:
        raise TokenRejected(
            "expired", f"the token expired at {_iso(token.expires_at)} ({now - token.expires_at:.0f} s ago)"
        )
    return token


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# --- the issuing side's ledger of secrets ------------------------------------------------------


@attrs.frozen
class LedgerEntry:
    peer: str
    expires_at: float
    spent_at: float | None = None


def record_issued(ledger: Mapping[str, LedgerEntry], token: PeeringToken, *, now: float) -> dict[str, LedgerEntry]:
    """The ledger with `token`'s secret added; entries expired for a day are dropped."""
    kept = {d: e for d, e in ledger.items() if e.expires_at + 86400 > now}
    kept[secret_digest(token.secret)] = LedgerEntry(peer=token.peer, expires_at=token.expires_at)
    return kept


def redeem(
    ledger: Mapping[str, LedgerEntry], *, secret: str, peer: str, now: float
) -> dict[str, LedgerEntry]:
    """Spend `secret` presented by cluster `peer`; returns the new ledger or raises `TokenRejected`."""
    digest = secret_digest(secret)
    entry = ledger.get(digest)
    if entry is None:
        raise TokenRejected("unknown-secret", "this cluster never issued that token (or it was removed)")
    if entry.spent_at is not None:
        raise TokenRejected("replayed", f"the token was already used at {_iso(entry.spent_at)}; tokens are single use")
    if entry.peer != peer:
        raise TokenRejected("wrong-cluster", f"the token is for cluster {entry.peer!r}, not {peer!r}")
    if now >= entry.expires_at:
        raise TokenRejected("expired", f"the token expired at {_iso(entry.expires_at)}")
    new = dict(ledger)
    new[digest] = attrs.evolve(entry, spent_at=now)
    return new


class TokenLedger:
    """Issued and spent token secrets (as SHA-256 digests) in `<data_dir>/peering/tokens.json`."""

    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / "peering" / "tokens.json"

    def load(self) -> dict[str, LedgerEntry]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError) as exc:
            raise PeeringError(f"{self.path}: cannot read the token ledger: {exc}") from None
        try:
            return {d: LedgerEntry(e["peer"], float(e["expires_at"]), e.get("spent_at")) for d, e in raw.items()}
        except (KeyError, TypeError, AttributeError, ValueError):
            raise PeeringError(f"{self.path}: the token ledger is corrupt") from None

    def save(self, ledger: Mapping[str, LedgerEntry]) -> None:
        body = {d: attrs.asdict(e) for d, e in ledger.items()}
        write_private(self.path, json.dumps(body, indent=1, sort_keys=True))


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- loading the signer -------------------------------------------------------------------------


@attrs.frozen
class Signer:
    cert_pem: str
    key: Any = attrs.field(repr=False)
    bundle_pem: str


def load_signer(pki_dir: str | Path, cluster: str) -> Signer:
    """The cluster's intermediate CA (`clusters/<cluster>/ca.{crt,key}`) and the mesh bundle (`bundle.pem`)."""
    pki = Path(pki_dir)
    cert_path = pki / "clusters" / cluster / "ca.crt"
    key_path = pki / "clusters" / cluster / "ca.key"
    bundle_path = pki / "bundle.pem"
    texts = {}
    for path in (cert_path, key_path, bundle_path):
        try:
            texts[path] = path.read_bytes()
        except FileNotFoundError:
            raise PeeringError(f"{path}: missing (create the cluster CA with `isthmus certs`)") from None
        except OSError as exc:
            raise PeeringError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        x509.load_pem_x509_certificate(texts[cert_path])
    except ValueError:
        raise PeeringError(f"{cert_path}: not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(texts[key_path], password=None)
    except (ValueError, TypeError):
        raise PeeringError(f"{key_path}: not an unencrypted PEM private key") from None
    try:
        bundle_certificates(texts[bundle_path].decode("ascii"))
    except ValueError:
        raise PeeringError(f"{bundle_path}: not a PEM trust bundle") from None
    return Signer(cert_pem=texts[cert_path].decode("ascii"), key=key, bundle_pem=texts[bundle_path].decode("ascii"))
