"""Issuing the mesh's certificates: the root CA, per-cluster intermediates and leaf identities.

- `init_root`: a self-signed root for a trust domain (ECDSA P-256 by default, RSA 3072 on
  request), 10 years, with a critical URI name constraint permitting only the trust domain
  (X.509 URI constraints match the host, so a root for `mesh.example` cannot vouch for
  `spiffe://other.example/...`: OpenSSL refuses such a chain with "permitted subtree violation").
- `create_cluster_ca`: a cluster's intermediate (path length 0, URI SAN
  `spiffe://<td>/cluster/<cluster>`, the same name constraint), 1 year.
- `issue_identity`: a leaf (X509-SVID) with URI SAN `spiffe://<td>/cluster/<cluster>/<name>`,
  DNS SANs on request, serverAuth and clientAuth, 24 hours, written as key + cert + chain.

X.509 cannot constrain URI paths, so "east-1's intermediate only issues identities under
`/cluster/east-1/`" is checked after the handshake by `certs.tls.peer_identity`.
`sign_certificate` is the one place a certificate is built; tests use it to forge bad ones.
Nothing is written before every input has been checked. Imports only `certs`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
from collections.abc import Sequence
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs import files
from certs.errors import (
    CertsError,
    InvalidCertificate,
    PemInvalid,
    PkiExists,
    PkiMissing,
    UnknownCluster,
)
from certs.files import PrivateKey
from certs.spiffe import SpiffeId, check_segment, cluster_id, validate_trust_domain, workload_id

KEY_TYPES = ("ec", "rsa")
RSA_BITS = 3072
ROOT_DAYS = 3650
CLUSTER_DAYS = 365
IDENTITY_HOURS = 24.0
# Leaves start a little in the past so a peer whose clock runs slightly behind accepts them.
BACKDATE = dt.timedelta(minutes=5)
ORGANIZATION = "Isthmus"
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def generate_key(key_type: str = "ec") -> PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    raise CertsError(f"key type {key_type!r}: expected one of {', '.join(KEY_TYPES)}")


def key_type_of(key: PrivateKey) -> str:
    return "rsa" if isinstance(key, rsa.RSAPrivateKey) else "ec"


def check_dns_name(name: object) -> str:
    """A DNS SAN: letters, digits and hyphens in dot-separated labels (`*.` allowed first)."""
    if not isinstance(name, str) or not name:
        raise InvalidCertificate(f"DNS name {name!r}: empty")
    labels = name.rstrip(".").split(".")
    if labels[0] == "*":
        labels = labels[1:]
    if len(name) > 253 or not labels or not all(_DNS_LABEL.match(label) for label in labels):
        raise InvalidCertificate(f"DNS name {name!r}: not a valid host name")
    return name


def _name(common_name: str, unit: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)]
    if unit:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]))
    return x509.Name(attributes)


def sign_certificate(
    *,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    issuer_cert: x509.Certificate | None,
    issuer_key: PrivateKey,
    not_before: dt.datetime,
    not_after: dt.datetime,
    ca: bool,
    path_length: int | None = None,
    uris: Sequence[str] = (),
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    permitted_uri_host: str | None = None,
    key_usage: str | None = None,
    extended_key_usage: bool | None = None,
) -> x509.Certificate:
    """Build and sign one certificate (self-signed when `issuer_cert` is None).

    `key_usage` is "ca" (keyCertSign, cRLSign), "leaf" (digitalSignature, plus
    keyEncipherment for RSA keys) or, by default, "ca" for CAs and "leaf" otherwise.
    `extended_key_usage` adds serverAuth + clientAuth (default: for leaves only).
    """
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer_cert is None else issuer_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
        .add_extension(ski, critical=False)
    )
    if issuer_cert is None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    else:
        issuer_ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), critical=False
        )
    usage = key_usage or ("ca" if ca else "leaf")
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    builder = builder.add_extension(
        x509.KeyUsage(
            digital_signature=usage != "ca",
            content_commitment=False,
            key_encipherment=usage != "ca" and is_rsa,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=ca,
            crl_sign=ca,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )
    if extended_key_usage if extended_key_usage is not None else not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    if names:
        # SPIFFE X509-SVIDs carry the ID only in the SAN; leaves with an empty-ish subject
        # would need a critical SAN, ours keep an O/CN subject so it stays non-critical.
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if permitted_uri_host is not None:
        builder = builder.add_extension(
            x509.NameConstraints(
                permitted_subtrees=[x509.UniformResourceIdentifier(permitted_uri_host)],
                excluded_subtrees=None,
            ),
            critical=True,
        )
    return builder.sign(issuer_key, hashes.SHA256())


# ---------------------------------------------------------------------------------------------
# Root CA


@attrs.frozen
class CertificateAuthority:
    """A CA read from disk: the certificate, its key and where they live."""

    cert: x509.Certificate
    key: PrivateKey
    cert_path: Path
    key_path: Path
    trust_domain: str
    cluster: str | None = None
    region: str | None = None
    zone: str | None = None


def trust_domain_of_ca(cert: x509.Certificate, source: str) -> str:
    """The trust domain a CA serves: its URI SAN's, else its URI name constraint's host."""
    from certs.chain import spiffe_ids_of

    ids = spiffe_ids_of(cert)
    if ids:
        return ids[0].trust_domain
    try:
        constraints = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        raise InvalidCertificate(
            f"{source}: a CA with neither a SPIFFE ID nor a URI name constraint"
        ) from None
    for subtree in constraints.permitted_subtrees or ():
        if isinstance(subtree, x509.UniformResourceIdentifier):
            return subtree.value
    raise InvalidCertificate(f"{source}: a CA with neither a SPIFFE ID nor a URI name constraint")


def load_root(pki_dir: str | Path) -> CertificateAuthority:
    root = files.root_dir(Path(pki_dir))
    cert_path, key_path = root / "ca.crt", root / "ca.key"
    if not cert_path.exists() and not key_path.exists():
        raise PkiMissing(f"{pki_dir}: no root CA here (run `isthmus certs init --dir {pki_dir}` first)")
    cert = files.load_certificate(cert_path, "root CA certificate")
    key = files.load_private_key(key_path, "root CA key")
    files.check_key_matches(key, cert, key_path, cert_path)
    return CertificateAuthority(cert, key, cert_path, key_path, trust_domain_of_ca(cert, str(cert_path)))


def init_root(
    pki_dir: str | Path,
    trust_domain: str,
    *,
    key_type: str = "ec",
    days: int = ROOT_DAYS,
    force: bool = False,
) -> CertificateAuthority:
    """Create the trust domain's root CA and the bundle; refuse to replace one unless `force`.

    With `force`, roots of the same trust domain that the old bundle held and that have
    not expired stay in the new bundle (after the new root), so identities issued under
    the previous root keep verifying during a root rotation.
    """
    pki_dir = Path(pki_dir)
    validate_trust_domain(trust_domain)
    if key_type not in KEY_TYPES:
        raise CertsError(f"key type {key_type!r}: expected one of {', '.join(KEY_TYPES)}")
    _check_days("days", days)
    root = files.root_dir(pki_dir)
    cert_path, key_path = root / "ca.crt", root / "ca.key"
    existing = [p for p in (cert_path, key_path) if p.exists()]
    if existing and not force:
        raise PkiExists(f"{existing[0]}: a root CA already exists; pass --force to replace it")
    kept: list[x509.Certificate] = []
    bundle = files.bundle_path(pki_dir)
    now = utcnow()
    if force and bundle.exists():
        try:
            previous = files.load_certificates(bundle, "trust bundle")
        except (PemInvalid, PkiMissing):
            previous = []
        for old in previous:
            try:
                same_domain = trust_domain_of_ca(old, str(bundle)) == trust_domain
            except InvalidCertificate:
                same_domain = False
            if same_domain and old.not_valid_after_utc > now:
                kept.append(old)
    key = generate_key(key_type)
    cert = sign_certificate(
        # The creation time tells apart the roots a bundle holds during a rotation.
        subject=_name(f"Isthmus root CA {now:%Y%m%dT%H%M%SZ} {trust_domain}"),
        public_key=key.public_key(),
        issuer_cert=None,
        issuer_key=key,
        not_before=now - BACKDATE,
        not_after=now + dt.timedelta(days=days),
        ca=True,
        path_length=1,
        uris=[str(SpiffeId(trust_domain))],
        permitted_uri_host=trust_domain,
    )
    files.write_files(
        [
            (key_path, files.key_pem(key), files.KEY_MODE),
            (cert_path, files.cert_pem(cert), files.PUBLIC_MODE),
            (bundle, files.cert_pem(cert, *kept), files.PUBLIC_MODE),
        ]
    )
    return CertificateAuthority(cert, key, cert_path, key_path, trust_domain)


# ---------------------------------------------------------------------------------------------
# Cluster intermediate CAs


def load_cluster_ca(pki_dir: str | Path, cluster: str) -> CertificateAuthority:
    pki_dir = Path(pki_dir)
    check_segment("cluster", cluster)
    directory = files.cluster_dir(pki_dir, cluster)
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    if not cert_path.exists() and not key_path.exists():
        known = ", ".join(list_clusters(pki_dir)) or "none yet"
        raise UnknownCluster(f"cluster {cluster!r}: no cluster CA in {pki_dir} (known: {known})")
    cert = files.load_certificate(cert_path, f"cluster CA certificate of {cluster}")
    key = files.load_private_key(key_path, f"cluster CA key of {cluster}")
    files.check_key_matches(key, cert, key_path, cert_path)
    meta = _read_cluster_json(directory / "cluster.json")
    return CertificateAuthority(
        cert,
        key,
        cert_path,
        key_path,
        trust_domain_of_ca(cert, str(cert_path)),
        cluster=cluster,
        region=meta.get("region"),
        zone=meta.get("zone"),
    )


def list_clusters(pki_dir: str | Path) -> list[str]:
    base = Path(pki_dir) / "clusters"
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / "ca.crt").exists())


def _read_cluster_json(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        value = json.loads(files.read_bytes(path, "cluster description"))
    except ValueError:
        raise CertsError(f"{path}: not valid JSON") from None
    if not isinstance(value, dict):
        raise CertsError(f"{path}: expected a JSON object")
    return value


def create_cluster_ca(
    pki_dir: str | Path,
    cluster: str,
    *,
    region: str,
    zone: str,
    days: int = CLUSTER_DAYS,
    force: bool = False,
) -> CertificateAuthority:
    """Create cluster `cluster`'s intermediate CA, signed by the root; refuse to replace one unless `force`."""
    pki_dir = Path(pki_dir)
    check_segment("cluster", cluster)
    check_segment("region", region)
    check_segment("zone", zone)
    _check_days("days", days)
    root = load_root(pki_dir)
    directory = files.cluster_dir(pki_dir, cluster)
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    existing = [p for p in (cert_path, key_path) if p.exists()]
    if existing and not force:
        raise PkiExists(f"{existing[0]}: cluster {cluster!r} already has a CA; pass --force to replace it")
    now = utcnow()
    not_after = _within(now + dt.timedelta(days=days), root.cert, "root CA", root.cert_path)
    key = generate_key(key_type_of(root.key))
    spiffe = cluster_id(root.trust_domain, cluster)
    cert = sign_certificate(
        subject=_name(f"Isthmus cluster CA {cluster}", unit=cluster),
        public_key=key.public_key(),
        issuer_cert=root.cert,
        issuer_key=root.key,
        not_before=now - BACKDATE,
        not_after=not_after,
        ca=True,
        path_length=0,
        uris=[str(spiffe)],
        permitted_uri_host=root.trust_domain,
    )
    meta = {
        "cluster": cluster,
        "region": region,
        "zone": zone,
        "trust_domain": root.trust_domain,
        "spiffe_id": str(spiffe),
    }
    files.write_files(
        [
            (key_path, files.key_pem(key), files.KEY_MODE),
            (cert_path, files.cert_pem(cert), files.PUBLIC_MODE),
            (directory / "cluster.json", (json.dumps(meta, indent=2) + "\n").encode(), files.PUBLIC_MODE),
        ]
    )
    return CertificateAuthority(
        cert, key, cert_path, key_path, root.trust_domain, cluster=cluster, region=region, zone=zone
    )


# ---------------------------------------------------------------------------------------------
# Leaf identities


def issue_identity(
    pki_dir: str | Path,
    cluster: str,
    name: str,
    *,
    dns_names: Sequence[str] = (),
    hours: float = IDENTITY_HOURS,
    not_before: dt.datetime | None = None,
    key_type: str = "ec",
) -> Path:
    """Issue `spiffe://<td>/cluster/<cluster>/<name>` from the cluster's CA; return its directory.

    The directory holds `key.pem` (0600), `cert.pem` and `chain.pem` (leaf + intermediate).
    The leaf is valid from `not_before` (default: now, less a few minutes for clock skew)
    for `hours`, never past the cluster CA's own expiry.
    """
    pki_dir = Path(pki_dir)
    check_segment("identity name", name)
    dns = [check_dns_name(d) for d in dns_names]
    if not isinstance(hours, int | float) or not hours > 0:
        raise CertsError(f"hours {hours!r}: must be a positive number")
    ca = load_cluster_ca(pki_dir, cluster)
    spiffe = workload_id(ca.trust_domain, cluster, name)
    start = (utcnow() - BACKDATE) if not_before is None else not_before
    end = start + dt.timedelta(hours=hours)
    if not_before is None:
        end = _within(end, ca.cert, f"cluster CA {cluster}", ca.cert_path)
    key = generate_key(key_type)
    cert = sign_certificate(
        subject=_name(name, unit=cluster),
        public_key=key.public_key(),
        issuer_cert=ca.cert,
        issuer_key=ca.key,
        not_before=start,
        not_after=end,
        ca=False,
        uris=[str(spiffe)],
        dns_names=dns,
    )
    directory = files.identity_dir(pki_dir, cluster, name)
    files.write_files(
        [
            (directory / "key.pem", files.key_pem(key), files.KEY_MODE),
            (directory / "cert.pem", files.cert_pem(cert), files.PUBLIC_MODE),
            (directory / "chain.pem", files.cert_pem(cert, ca.cert), files.PUBLIC_MODE),
        ]
    )
    return directory


def forge_identity(
    out_dir: str | Path,
    *,
    issuer: CertificateAuthority,
    uris: Sequence[str],
    not_before: dt.datetime | None = None,
    hours: float = IDENTITY_HOURS,
    ca: bool = False,
    key_usage: str | None = None,
    extended_key_usage: bool | None = None,
) -> Path:
    """Write key.pem/cert.pem/chain.pem for any URIs under `issuer`, with no mesh rule applied.

    Tests use it to make the leaves a peer must refuse: a west-1 ID from east-1's CA, another
    trust domain, a CA certificate presented as a leaf.
    """
    start = (utcnow() - BACKDATE) if not_before is None else not_before
    key = generate_key("ec")
    cert = sign_certificate(
        subject=_name("forged", unit=issuer.cluster),
        public_key=key.public_key(),
        issuer_cert=issuer.cert,
        issuer_key=issuer.key,
        not_before=start,
        not_after=start + dt.timedelta(hours=hours),
        ca=ca,
        path_length=0 if ca else None,
        uris=list(uris),
        key_usage=key_usage,
        extended_key_usage=extended_key_usage,
    )
    out = Path(out_dir)
    chain = [cert] if issuer.cluster is None else [cert, issuer.cert]
    files.write_files(
        [
            (out / "key.pem", files.key_pem(key), files.KEY_MODE),
            (out / "cert.pem", files.cert_pem(cert), files.PUBLIC_MODE),
            (out / "chain.pem", files.cert_pem(*chain), files.PUBLIC_MODE),
        ]
    )
    return out


def _check_days(what: str, days: object) -> None:
    if not isinstance(days, int) or isinstance(days, bool) or days <= 0:
        raise CertsError(f"{what} {days!r}: must be a positive whole number of days")


def _within(not_after: dt.datetime, issuer: x509.Certificate, what: str, path: Path) -> dt.datetime:
    """Clip a validity end to the issuer's; refuse to sign under an expired issuer."""
    limit = issuer.not_valid_after_utc
    if limit <= utcnow():
        raise InvalidCertificate(
            f"{path}: the {what} expired on {limit:%Y-%m-%d %H:%M} UTC; replace it first"
        )
    return min(not_after, limit)
