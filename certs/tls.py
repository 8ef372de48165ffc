"""Mutual TLS for the mesh: `ssl.SSLContext` factories, the verified peer identity, handshake reasons.

- `server_context` / `client_context`: TLS 1.3 minimum, ALPN `h2` and `http/1.1`, our chain and
  key, the trust bundle as the only roots. Servers require a client certificate. Host names are
  not checked: identities are SPIFFE URIs, checked by `peer_identity` after the handshake.
- `peer_identity(conn)`: the peer's SPIFFE ID from a live connection (`ssl.SSLObject`,
  `ssl.SSLSocket` or `trio.SSLStream`), after the mesh's own rule (`certs.chain.check_peer_chain`):
  the leaf is not a CA and its ID lies under the cluster of the intermediate that issued it.
- `classify_handshake_error(exc)`: a short reason slug for a failed handshake, for metrics.

This module uses only the standard `ssl` module and `certs`; it never imports trio (a
`trio.SSLStream` is recognised by its attributes).
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any

from cryptography import x509

from certs.chain import check_peer_chain, find_issuer
from certs.errors import IdentityRejected
from certs.spiffe import SpiffeId
from certs.store import Identity, TrustBundle

DEFAULT_ALPN = ("h2", "http/1.1")
_ENCODING_DER = 2  # _ssl.ENCODING_DER, for the _ssl.Certificate objects of get_verified_chain()

# OpenSSL X509_V_ERR_* codes (x509_vfy.h) that name a reason by themselves.
_VERIFY_CODES = {
    2: "unknown-ca",  # unable to get issuer certificate
    9: "not-yet-valid",
    10: "expired",
    13: "not-yet-valid",  # error in cert's notBefore field
    14: "expired",  # error in cert's notAfter field
    18: "unknown-ca",  # self-signed certificate
    19: "unknown-ca",  # self-signed certificate in chain
    20: "unknown-ca",  # unable to get local issuer certificate
    21: "unknown-ca",  # unable to verify the first certificate
    7: "bad-signature",
    24: "invalid-ca",
    25: "path-length",
    26: "wrong-purpose",
    47: "name-constraint",  # permitted subtree violation
    48: "name-constraint",  # excluded subtree violation
    49: "name-constraint",
    51: "name-constraint",
    53: "name-constraint",
}

# OpenSSL reason codes (`SSLError.reason`): ours (verify failed) or the peer's alert.
_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no-client-cert",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "no-client-cert",
    "TLSV1_ALERT_UNKNOWN_CA": "unknown-ca",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "expired",
    "SSLV3_ALERT_BAD_CERTIFICATE": "bad-certificate",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "wrong-purpose",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "bad-certificate",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "revoked",
    "TLSV1_ALERT_ACCESS_DENIED": "access-denied",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol-version",
    "UNSUPPORTED_PROTOCOL": "protocol-version",
    "WRONG_VERSION_NUMBER": "not-tls",
    "HTTP_REQUEST": "not-tls",
    "NO_SHARED_CIPHER": "no-shared-cipher",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "handshake-failure",
    "TLSV1_ALERT_NO_APPLICATION_PROTOCOL": "no-alpn",
    "NO_APPLICATION_PROTOCOL": "no-alpn",
    "UNEXPECTED_EOF_WHILE_READING": "connection-closed",
}

_MESSAGES = (
    ("permitted subtree violation", "name-constraint"),
    ("excluded subtree violation", "name-constraint"),
    ("certificate has expired", "expired"),
    ("certificate is not yet valid", "not-yet-valid"),
    ("unable to get local issuer certificate", "unknown-ca"),
    ("self-signed certificate", "unknown-ca"),
    ("self signed certificate", "unknown-ca"),
    ("unsupported certificate purpose", "wrong-purpose"),
    ("unsuitable certificate purpose", "wrong-purpose"),
    ("peer did not return a certificate", "no-client-cert"),
    ("certificate required", "no-client-cert"),
    ("unknown ca", "unknown-ca"),
    ("bad certificate", "bad-certificate"),
)


def _base_context(
    protocol: int,
    identity: Identity,
    bundle: TrustBundle,
    alpn: Sequence[str],
    minimum_version: ssl.TLSVersion,
) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = minimum_version
    context.load_cert_chain(str(identity.chain_path), str(identity.key_path))
    context.load_verify_locations(cadata=bundle.pem)
    # Strict RFC 5280 checks (AKI/SKI present, CA key usage): our PKI issues certificates that pass them.
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def server_context(
    identity: Identity,
    bundle: TrustBundle,
    *,
    alpn: Sequence[str] = DEFAULT_ALPN,
    require_client_cert: bool = True,
    minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
) -> ssl.SSLContext:
    """A server context presenting `identity`; clients must present a chain to `bundle`."""
    context = _base_context(ssl.PROTOCOL_TLS_SERVER, identity, bundle, alpn, minimum_version)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(
    identity: Identity | None,
    bundle: TrustBundle,
    *,
    alpn: Sequence[str] = DEFAULT_ALPN,
    minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
) -> ssl.SSLContext:
    """A client context presenting `identity` (None: no client certificate) and verifying the
    server's chain against `bundle`. Host names are not checked: call `peer_identity`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = minimum_version
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=bundle.pem)
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    if identity is not None:
        context.load_cert_chain(str(identity.chain_path), str(identity.key_path))
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def _ssl_object(conn: Any) -> Any:
    """The `ssl.SSLObject`/`ssl.SSLSocket` behind `conn` (a trio.SSLStream keeps it private)."""
    if isinstance(conn, ssl.SSLObject | ssl.SSLSocket):
        return conn
    inner = getattr(conn, "ssl_object", None) or getattr(conn, "_ssl_object", None)
    if isinstance(inner, ssl.SSLObject | ssl.SSLSocket):
        return inner
    raise TypeError(
        f"peer_identity needs an ssl.SSLObject, ssl.SSLSocket or trio.SSLStream, not {type(conn).__name__}"
    )


def _der_chain(raw: Sequence[Any]) -> list[x509.Certificate]:
    out = []
    for cert in raw:
        der = cert if isinstance(cert, bytes) else cert.public_bytes(_ENCODING_DER)
        out.append(x509.load_der_x509_certificate(der))
    return out


# Python 3.13 has a public SSLObject.get_verified_chain(); 3.10-3.12 have it on `_sslobj`.
_CHAIN_METHODS: tuple[str, ...] = ("get_verified_chain",)


def verified_chain(conn: Any) -> list[x509.Certificate]:
    """The peer's chain as OpenSSL verified it (leaf first, root last).

    Uses `get_verified_chain()` (public on Python 3.13, on the private `_sslobj` before).
    Without it, the leaf's issuer is taken from the chain the peer sent, matched by name and
    its signature checked here, and that issuer must in turn be signed by one of the roots the
    connection's context trusts.
    """
    obj = _ssl_object(conn)
    for holder in (obj, getattr(obj, "_sslobj", None)):
        for name in _CHAIN_METHODS:
            method = getattr(holder, name, None)
            if method is not None:
                raw = method()
                if raw:
                    return _der_chain(raw)
    leaf_der = obj.getpeercert(binary_form=True)
    if not leaf_der:
        return []
    leaf = x509.load_der_x509_certificate(leaf_der)
    sent: list[x509.Certificate] = []
    for holder in (obj, getattr(obj, "_sslobj", None)):
        method = getattr(holder, "get_unverified_chain", None)
        if method is not None:
            sent = _der_chain(method() or [])
            break
    issuer = find_issuer(leaf, [c for c in sent if c != leaf])
    if issuer is None:
        return [leaf]
    roots = _der_chain(obj.context.get_ca_certs(binary_form=True))
    root = find_issuer(issuer, roots)
    if root is None:
        raise IdentityRejected(
            "unknown-ca", f"the issuer of {leaf.subject.rfc4514_string()} does not chain to a trusted root"
        )
    return [leaf, issuer, root]


def peer_identity(conn: Any) -> SpiffeId:
    """The verified peer's SPIFFE ID, after the mesh's rules; raises `IdentityRejected`."""
    return check_peer_chain(verified_chain(conn))


def _unwrap(exc: BaseException) -> BaseException:
    """The SSL error inside a wrapper such as trio.BrokenResourceError."""
    seen = 0
    while not isinstance(exc, ssl.SSLError | IdentityRejected) and seen < 5:
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc = inner
        seen += 1
    return exc


def classify_handshake_error(exc: BaseException) -> str:
    """A short slug for why a handshake failed (`unknown-ca`, `expired`, `no-client-cert`, ...)."""
    exc = _unwrap(exc)
    if isinstance(exc, IdentityRejected):
        return exc.reason
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = _VERIFY_CODES.get(getattr(exc, "verify_code", -1))
        if reason:
            return reason
    if isinstance(exc, ssl.SSLError):
        reason = _REASONS.get(getattr(exc, "reason", None) or "")
        if reason:
            return reason
    if isinstance(exc, ssl.SSLEOFError | EOFError | ConnectionResetError | BrokenPipeError):
        return "connection-closed"
    text = str(exc).lower()
    for needle, reason in _MESSAGES:
        if needle in text:
            return reason
    if isinstance(exc, ssl.SSLError):
        return "bad-certificate" if "certificate" in text else "handshake-failed"
    return "connection-closed" if isinstance(exc, OSError) else "handshake-failed"
