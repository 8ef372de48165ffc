"""Errors of the mesh PKI, rooted at `CertsError`.

Every message is one line naming the file, cluster, identity or value at fault: the
command line prints it as `isthmus: error: <message>` and exits 2. `IdentityRejected`
carries a short `reason` slug (for metrics and the `x-isthmus-reason` header) beside
the human `detail`. This module imports nothing from Isthmus.
"""

from __future__ import annotations


class CertsError(Exception):
    """Root of the PKI's errors."""


class PkiExists(CertsError):
    """A CA (or identity) already exists where a new one would be written; `--force` replaces it."""


class PkiMissing(CertsError):
    """The PKI directory, its root CA, bundle, or a file it should hold does not exist."""


class FileUnreadable(CertsError):
    """A file that exists but cannot be read (permissions, a directory in its place)."""


class PemInvalid(CertsError):
    """A file that is not the PEM it should be (certificate, key or bundle)."""


class KeyMismatch(CertsError):
    """A private key that does not belong to the certificate it sits beside."""


class UnknownCluster(CertsError):
    """A cluster name with no intermediate CA in the PKI directory."""


class UnknownIdentity(CertsError):
    """An identity name with no key and certificate under its cluster."""


class InvalidTrustDomain(CertsError):
    """A trust domain that is not valid per the SPIFFE ID specification."""


class InvalidSpiffeId(CertsError):
    """A SPIFFE ID (or a cluster or workload name used in one) that is not valid."""


class InvalidCertificate(CertsError):
    """A certificate that parses but cannot be used for what it is asked to do."""


class IdentityRejected(CertsError):
    """A peer whose certificate chain broke one of the mesh's identity rules.

    `reason` is a short slug (`cluster-mismatch`, `ca-as-leaf`, `no-spiffe-id`, ...);
    `detail` is one human line.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"peer identity rejected ({reason}): {detail}")
        self.reason = reason
        self.detail = detail
