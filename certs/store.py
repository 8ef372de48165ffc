"""Reading identities and trust bundles from a PKI directory, checked before anyone uses them.

`load_identity(pki_dir, cluster, name)` returns an `Identity` (paths, SPIFFE ID, validity)
after checking that the key is the certificate's and that the chain starts with that
certificate. `load_bundle(pki_dir)` returns the `TrustBundle` (every trusted root; several
during a root rotation). Errors are one line naming the file. Imports only `certs`.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import attrs
from cryptography import x509

from certs import files
from certs.chain import spiffe_ids_of
from certs.errors import InvalidCertificate, PemInvalid, UnknownIdentity
from certs.pki import load_cluster_ca, trust_domain_of_ca
from certs.spiffe import SpiffeId, check_segment


@attrs.frozen
class Identity:
    """A workload's certificate and key on disk, checked to belong together."""

    spiffe_id: SpiffeId
    cert_path: Path
    key_path: Path
    chain_path: Path
    not_before: dt.datetime
    not_after: dt.datetime
    certificate: x509.Certificate = attrs.field(repr=False, eq=False)

    @property
    def serial_number(self) -> int:
        return self.certificate.serial_number

    @property
    def dns_names(self) -> tuple[str, ...]:
        from certs.chain import dns_names_of

        return tuple(dns_names_of(self.certificate))

    @property
    def lifetime(self) -> dt.timedelta:
        return self.not_after - self.not_before


@attrs.frozen
class TrustBundle:
    """The roots a peer's chain must end at. `pem` is what `SSLContext.load_verify_locations(cadata=)` takes."""

    pem: str
    path: Path | None
    trust_domain: str
    roots: tuple[x509.Certificate, ...] = attrs.field(repr=False, eq=False)


def load_identity_files(
    cert_path: str | Path, key_path: str | Path, chain_path: str | Path | None = None
) -> Identity:
    """An identity from explicit files (chain defaults to the certificate file)."""
    cert_path, key_path = Path(cert_path), Path(key_path)
    chain_path = Path(chain_path) if chain_path is not None else cert_path
    cert = files.load_certificate(cert_path, "certificate")
    key = files.load_private_key(key_path)
    files.check_key_matches(key, cert, key_path, cert_path)
    chain = files.load_certificates(chain_path, "certificate chain")
    if chain[0] != cert:
        raise InvalidCertificate(f"{chain_path}: the chain does not start with the certificate {cert_path}")
    ids = spiffe_ids_of(cert)
    if not ids:
        raise InvalidCertificate(f"{cert_path}: no SPIFFE ID (URI SAN) in this certificate")
    return Identity(
        spiffe_id=ids[0],
        cert_path=cert_path,
        key_path=key_path,
        chain_path=chain_path,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        certificate=cert,
    )


def load_identity(pki_dir: str | Path, cluster: str, name: str) -> Identity:
    """The identity `<name>` of cluster `<cluster>`: key.pem, cert.pem, chain.pem, checked."""
    pki_dir = Path(pki_dir)
    check_segment("cluster", cluster)
    check_segment("identity name", name)
    directory = files.identity_dir(pki_dir, cluster, name)
    if not directory.is_dir():
        load_cluster_ca(pki_dir, cluster)  # names the cluster when it is the unknown part
        raise UnknownIdentity(
            f"identity {name!r} of cluster {cluster!r}: nothing at {directory} "
            f"(run `isthmus certs issue --cluster {cluster} --name {name} --dir {pki_dir}`)"
        )
    return load_identity_files(directory / "cert.pem", directory / "key.pem", directory / "chain.pem")


def bundle_from_pem(data: bytes, source: str, path: Path | None = None) -> TrustBundle:
    roots = files.parse_certificates(data, source, "trust bundle")
    domains = []
    for root in roots:
        domain = trust_domain_of_ca(root, source)
        if domain not in domains:
            domains.append(domain)
    if len(domains) > 1:
        raise PemInvalid(f"{source}: roots of several trust domains ({', '.join(domains)}) in one bundle")
    return TrustBundle(
        pem=files.cert_pem(*roots).decode(), path=path, trust_domain=domains[0], roots=tuple(roots)
    )


def load_bundle(pki_dir: str | Path) -> TrustBundle:
    """The trust bundle of a PKI directory (`bundle.pem`)."""
    path = files.bundle_path(Path(pki_dir))
    return bundle_from_pem(files.read_bytes(path, "trust bundle"), str(path), path)
