"""The mesh's certificate-chain rules (pure: certificates and `now` in, a verdict out).

- `check_peer_chain(chain)`: Isthmus's own rule after OpenSSL verified a chain: the leaf is not
  a CA, carries exactly one SPIFFE ID, and that ID lies under `/cluster/<c>/` where `<c>` is the
  cluster of the intermediate that issued it (X.509 name constraints cannot express paths).
- `verify_chain(certs, roots, now)`: an offline check of a chain against a trust bundle
  (signatures, validity, basic constraints, URI name constraints, the cluster rule), used by
  `isthmus certs inspect`. The handshake itself is verified by OpenSSL, not by this.

Imports only `certs.errors` and `certs.spiffe`; never trio, never a socket.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from urllib.parse import urlsplit

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from certs.errors import IdentityRejected, InvalidSpiffeId
from certs.spiffe import SpiffeId


def uris_of(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def dns_names_of(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.DNSName)


def spiffe_ids_of(cert: x509.Certificate) -> list[SpiffeId]:
    """The certificate's URI SANs that are valid SPIFFE IDs."""
    ids = []
    for uri in uris_of(cert):
        if uri.startswith("spiffe://"):
            try:
                ids.append(SpiffeId.parse(uri))
            except InvalidSpiffeId:
                continue
    return ids


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _describe(cert: x509.Certificate) -> str:
    ids = uris_of(cert)
    return ids[0] if ids else cert.subject.rfc4514_string()


def leaf_spiffe_id(leaf: x509.Certificate) -> SpiffeId:
    """The one SPIFFE ID of an end-entity certificate; `IdentityRejected` otherwise."""
    if is_ca(leaf):
        raise IdentityRejected("ca-as-leaf", f"{_describe(leaf)} is a CA certificate presented as a leaf")
    uris = uris_of(leaf)
    if not uris:
        raise IdentityRejected("no-spiffe-id", f"{leaf.subject.rfc4514_string()} has no URI SAN")
    if len(uris) > 1:
        raise IdentityRejected("several-uris", f"a leaf must carry exactly one URI SAN, found {len(uris)}")
    try:
        return SpiffeId.parse(uris[0])
    except InvalidSpiffeId as exc:
        raise IdentityRejected("bad-spiffe-id", str(exc)) from None


def check_issuer_rule(leaf_id: SpiffeId, issuer: x509.Certificate) -> SpiffeId:
    """A leaf issued by cluster `<c>`'s CA must be `spiffe://<td>/cluster/<c>/...`; return the leaf's ID."""
    cluster_ids = [i for i in spiffe_ids_of(issuer) if i.is_cluster_id]
    if not cluster_ids:
        raise IdentityRejected(
            "no-cluster-ca",
            f"{leaf_id} was not issued by a cluster CA (issuer {issuer.subject.rfc4514_string()})",
        )
    issuer_id = cluster_ids[0]
    if leaf_id.trust_domain != issuer_id.trust_domain:
        raise IdentityRejected(
            "trust-domain-mismatch", f"{leaf_id} was issued by {issuer_id}, of another trust domain"
        )
    if not leaf_id.is_under(issuer_id):
        raise IdentityRejected(
            "cluster-mismatch",
            f"{leaf_id} was issued by cluster {issuer_id.cluster}'s CA, "
            f"which may only issue identities under {issuer_id}/",
        )
    return leaf_id


def check_peer_chain(chain: Sequence[x509.Certificate]) -> SpiffeId:
    """Apply the mesh's identity rules to a chain already verified by OpenSSL (leaf first)."""
    if not chain:
        raise IdentityRejected("no-peer-certificate", "the peer presented no certificate")
    leaf_id = leaf_spiffe_id(chain[0])
    if len(chain) < 2:
        raise IdentityRejected("no-cluster-ca", f"{leaf_id} came without its issuing cluster CA")
    return check_issuer_rule(leaf_id, chain[1])


def find_issuer(cert: x509.Certificate, candidates: Sequence[x509.Certificate]) -> x509.Certificate | None:
    """The candidate whose signature is on `cert` (matched by name, then verified)."""
    for candidate in candidates:
        if candidate.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return candidate
    return None


def _uri_host_permitted(uri: str, host: str) -> bool:
    """RFC 5280 URI constraint: the URI's host equals `host` (or is below it when `host` starts with '.')."""
    actual = (urlsplit(uri).hostname or "").lower()
    host = host.lower()
    if host.startswith("."):
        return actual.endswith(host)
    return actual == host


@attrs.frozen
class ChainReport:
    """The verdict of `verify_chain`: `ok`, one line of `detail`, and the path that was built."""

    ok: bool
    detail: str
    path: tuple[x509.Certificate, ...] = ()
    spiffe_id: SpiffeId | None = None


def verify_chain(
    certs: Sequence[x509.Certificate], roots: Sequence[x509.Certificate], now: dt.datetime
) -> ChainReport:
    """Check `certs` (first = the one to verify, then any intermediates) against `roots` at `now`."""
    if not certs:
        return ChainReport(False, "no certificate")
    if not roots:
        return ChainReport(False, "the trust bundle holds no root")
    path = [certs[0]]
    pool = list(certs[1:])
    while True:
        current = path[-1]
        root = find_issuer(current, roots)
        if root is not None:
            if root.fingerprint(_sha256()) != current.fingerprint(_sha256()):
                path.append(root)
            break
        issuer = find_issuer(current, [c for c in pool if c not in path])
        if issuer is None or len(path) > 8:
            return ChainReport(
                False, f"no issuer in the chain or bundle for {_describe(current)} (unknown CA)", tuple(path)
            )
        path.append(issuer)
    for cert in path:
        if now < cert.not_valid_before_utc:
            return ChainReport(
                False,
                f"{_describe(cert)} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
                tuple(path),
            )
        if now > cert.not_valid_after_utc:
            return ChainReport(
                False,
                f"{_describe(cert)} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
                tuple(path),
            )
    for depth, ca in enumerate(path[1:], start=1):
        if not is_ca(ca):
            return ChainReport(False, f"{_describe(ca)} signs certificates but is not a CA", tuple(path))
        try:
            limit = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
        except x509.ExtensionNotFound:
            limit = None
        below_cas = sum(1 for c in path[1:depth] if is_ca(c))
        if limit is not None and below_cas > limit:
            return ChainReport(
                False, f"{_describe(ca)} allows {limit} CA(s) below it, found {below_cas}", tuple(path)
            )
        try:
            constraints = ca.extensions.get_extension_for_class(x509.NameConstraints).value
        except x509.ExtensionNotFound:
            continue
        hosts = [
            s.value
            for s in constraints.permitted_subtrees or ()
            if isinstance(s, x509.UniformResourceIdentifier)
        ]
        if not hosts:
            continue
        for below in path[:depth]:
            for uri in uris_of(below):
                if not any(_uri_host_permitted(uri, h) for h in hosts):
                    return ChainReport(
                        False,
                        f"{uri} is outside {_describe(ca)}'s name constraint ({', '.join(hosts)})",
                        tuple(path),
                    )
    leaf = path[0]
    if is_ca(leaf):
        ids = spiffe_ids_of(leaf)
        return ChainReport(
            True, "a CA certificate; chains to the bundle", tuple(path), ids[0] if ids else None
        )
    try:
        spiffe = check_peer_chain(path)
    except IdentityRejected as exc:
        return ChainReport(False, f"{exc.reason}: {exc.detail}", tuple(path))
    return ChainReport(True, f"verifies against the bundle as {spiffe}", tuple(path), spiffe)


def _sha256():
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()
