"""A ready-made PKI for tests: `make_pki(dir)` builds a trust domain with three clusters in ~0.1 s.

`TestPki` hands out identities, the bundle and mutual-TLS contexts, and forges the certificates
a peer must refuse (`forge`). Other packages' tests use it; it imports only `certs`.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import attrs

from certs import pki, tls
from certs.pki import CertificateAuthority
from certs.spiffe import SpiffeId, workload_id
from certs.store import Identity, TrustBundle, load_bundle, load_identity, load_identity_files

DEMO_CLUSTERS: Mapping[str, tuple[str, str]] = {
    "east-1": ("us-east", "us-east-1a"),
    "east-2": ("us-east", "us-east-1c"),
    "west-1": ("eu-west", "eu-west-1a"),
}


@attrs.define
class TestPki:
    """A PKI directory made by `make_pki`, with shortcuts to what tests need from it."""

    __test__ = False  # not a pytest test class

    dir: Path
    trust_domain: str
    clusters: tuple[str, ...]
    bundle: TrustBundle

    def identity(self, cluster: str, name: str = "gateway") -> Identity:
        return load_identity(self.dir, cluster, name)

    def spiffe_id(self, cluster: str, name: str = "gateway") -> SpiffeId:
        return workload_id(self.trust_domain, cluster, name)

    def issue(self, cluster: str, name: str, **kwargs) -> Identity:
        """Issue (or reissue) an identity; keyword arguments go to `certs.pki.issue_identity`."""
        pki.issue_identity(self.dir, cluster, name, **kwargs)
        return self.identity(cluster, name)

    def cluster_ca(self, cluster: str) -> CertificateAuthority:
        return pki.load_cluster_ca(self.dir, cluster)

    def root_ca(self) -> CertificateAuthority:
        return pki.load_root(self.dir)

    def forge(
        self,
        label: str,
        *,
        issuer_cluster: str | None,
        uris: Sequence[str],
        not_before: dt.datetime | None = None,
        hours: float = 24.0,
        ca: bool = False,
        key_usage: str | None = None,
        extended_key_usage: bool | None = None,
    ) -> Identity:
        """A certificate that breaks a mesh rule, signed by a cluster CA (or the root when None)."""
        issuer = self.root_ca() if issuer_cluster is None else self.cluster_ca(issuer_cluster)
        out = pki.forge_identity(
            self.dir / "forged" / label,
            issuer=issuer,
            uris=uris,
            not_before=not_before,
            hours=hours,
            ca=ca,
            key_usage=key_usage,
            extended_key_usage=extended_key_usage,
        )
        return load_identity_files(out / "cert.pem", out / "key.pem", out / "chain.pem")

    def server_context(self, cluster: str, name: str = "gateway", **kwargs) -> ssl.SSLContext:
        return tls.server_context(self.identity(cluster, name), self.bundle, **kwargs)

    def client_context(self, cluster: str, name: str = "gateway", **kwargs) -> ssl.SSLContext:
        return tls.client_context(self.identity(cluster, name), self.bundle, **kwargs)


def make_pki(
    dir: str | Path,
    trust_domain: str = "mesh.example",
    clusters: Mapping[str, tuple[str, str]] | None = None,
    identities: Iterable[str] = ("gateway",),
) -> TestPki:
    """Root, one intermediate per cluster (region, zone) and the named identities in each."""
    directory = Path(dir)
    clusters = DEMO_CLUSTERS if clusters is None else clusters
    names = tuple(identities)
    pki.init_root(directory, trust_domain)
    for cluster, (region, zone) in clusters.items():
        pki.create_cluster_ca(directory, cluster, region=region, zone=zone)
        for name in names:
            pki.issue_identity(directory, cluster, name)
    return TestPki(directory, trust_domain, tuple(clusters), load_bundle(directory))
