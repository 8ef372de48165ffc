"""SPIFFE IDs: parsing and the mesh's naming of clusters and workloads (pure).

A SPIFFE ID is `spiffe://<trust-domain><path>` per the SPIFFE ID specification
(github.com/spiffe/spiffe, standards/SPIFFE-ID.md):

- the scheme is exactly `spiffe`, followed by `://`;
- the trust domain is 1..255 characters of lower-case letters, digits, `.`, `-`, `_`
  (so no port, no userinfo, no upper case);
- the path is empty or `/`-separated segments of letters, digits, `.`, `-`, `_`;
  no empty segment, no `.` or `..` segment, no trailing `/` (so no query or fragment);
- the whole ID is at most 2048 bytes.

The mesh names a cluster `spiffe://<td>/cluster/<cluster>` and a workload in it
`spiffe://<td>/cluster/<cluster>/<name>`. This module imports only `certs.errors`.
"""

from __future__ import annotations

import string

import attrs

from certs.errors import InvalidSpiffeId, InvalidTrustDomain

SCHEME_PREFIX = "spiffe://"
MAX_ID_BYTES = 2048
MAX_TRUST_DOMAIN_BYTES = 255
TRUST_DOMAIN_CHARS = frozenset(string.ascii_lowercase + string.digits + ".-_")
PATH_SEGMENT_CHARS = frozenset(string.ascii_letters + string.digits + ".-_")
CLUSTER_SEGMENT = "cluster"


def _trust_domain_problem(td: str) -> str | None:
    """Why `td` is not a trust domain, or None when it is one."""
    if not td:
        return "the trust domain is missing"
    if len(td.encode()) > MAX_TRUST_DOMAIN_BYTES:
        return f"the trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes"
    for ch in td:
        if ch in TRUST_DOMAIN_CHARS:
            continue
        if ch == ":":
            return "a trust domain cannot carry a port"
        if ch == "@":
            return "a trust domain cannot carry userinfo"
        if ch in string.ascii_uppercase:
            return "trust domain characters must be lower case"
        return f"trust domain characters are limited to a-z 0-9 . - _ (found {ch!r})"
    return None


def validate_trust_domain(td: object) -> str:
    """Return `td` when it is a valid SPIFFE trust domain; else raise `InvalidTrustDomain`.

    Besides the specification's characters and length, a new trust domain must not start or
    end with `.` nor hold `..`: it becomes the host of the root's URI name constraint.
    """
    if not isinstance(td, str):
        raise InvalidTrustDomain(f"trust domain {td!r}: not a string")
    problem = _trust_domain_problem(td)
    if problem is None and (td.startswith(".") or td.endswith(".") or ".." in td):
        problem = "a trust domain cannot start or end with '.' or hold an empty label"
    if problem is not None:
        raise InvalidTrustDomain(f"trust domain {td!r}: {problem}")
    return td


def _segment_problem(segment: str) -> str | None:
    if segment == "":
        return "the path cannot contain empty segments"
    if segment in (".", ".."):
        return "the path cannot contain '.' or '..' segments"
    for ch in segment:
        if ch in PATH_SEGMENT_CHARS:
            continue
        if ch == "?":
            return "a SPIFFE ID cannot carry a query"
        if ch == "#":
            return "a SPIFFE ID cannot carry a fragment"
        return f"path characters are limited to letters, digits, . - _ (found {ch!r})"
    return None


def _path_problem(path: str) -> str | None:
    if path == "":
        return None
    if not path.startswith("/"):
        return "the path must start with '/'"
    if path.endswith("/"):
        return "the path cannot end with '/'"
    for segment in path[1:].split("/"):
        problem = _segment_problem(segment)
        if problem is not None:
            return problem
    return None


def check_segment(what: str, value: object) -> str:
    """Return `value` when it can be one path segment (a cluster or workload name)."""
    if not isinstance(value, str):
        raise InvalidSpiffeId(f"{what} {value!r}: not a string")
    problem = _segment_problem(value)
    if problem is None and len(value.encode()) > 255:
        problem = "longer than 255 bytes"
    if problem is not None:
        raise InvalidSpiffeId(f"{what} {value!r}: not usable in a SPIFFE ID: {problem}")
    return value


@attrs.frozen(order=True)
class SpiffeId:
    """A parsed SPIFFE ID. `str()` gives it back as text."""

    trust_domain: str
    path: str = ""

    def __attrs_post_init__(self) -> None:
        problem = _trust_domain_problem(self.trust_domain) or _path_problem(self.path)
        if problem is None and len(str(self).encode()) > MAX_ID_BYTES:
            problem = f"longer than {MAX_ID_BYTES} bytes"
        if problem is not None:
            raise InvalidSpiffeId(f"SPIFFE ID {SCHEME_PREFIX}{self.trust_domain}{self.path!s}: {problem}")

    @classmethod
    def parse(cls, text: object) -> SpiffeId:
        """Parse `spiffe://<td><path>`; raise `InvalidSpiffeId` naming the text and the rule broken."""
        if not isinstance(text, str):
            raise InvalidSpiffeId(f"SPIFFE ID {text!r}: not a string")
        shown = text if len(text) <= 120 else text[:117] + "..."

        def bad(problem: str) -> InvalidSpiffeId:
            return InvalidSpiffeId(f"SPIFFE ID {shown!r}: {problem}")

        if text == "":
            raise bad("empty")
        if len(text.encode()) > MAX_ID_BYTES:
            raise bad(f"longer than {MAX_ID_BYTES} bytes")
        if not text.startswith(SCHEME_PREFIX):
            raise bad("the scheme must be 'spiffe://'")
        rest = text[len(SCHEME_PREFIX) :]
        slash = rest.find("/")
        td, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
        if td == "":
            raise bad("the trust domain is missing")
        # A query or fragment straight after the trust domain is named as such.
        for mark, name in (("?", "query"), ("#", "fragment")):
            if mark in td:
                raise bad(f"a SPIFFE ID cannot carry a {name}")
        problem = _trust_domain_problem(td) or _path_problem(path)
        if problem is not None:
            raise bad(problem)
        return cls(td, path)

    def __str__(self) -> str:
        return f"{SCHEME_PREFIX}{self.trust_domain}{self.path}"

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path[1:].split("/")) if self.path else ()

    @property
    def cluster(self) -> str | None:
        """`<name>` when the path is `/cluster/<name>` or `/cluster/<name>/...`, else None."""
        segments = self.segments
        if len(segments) >= 2 and segments[0] == CLUSTER_SEGMENT:
            return segments[1]
        return None

    @property
    def is_cluster_id(self) -> bool:
        """True for exactly `/cluster/<name>` (the ID of a cluster's intermediate CA)."""
        return len(self.segments) == 2 and self.cluster is not None

    @property
    def workload(self) -> str | None:
        """The part after `/cluster/<name>/` (e.g. `gateway`), or None."""
        segments = self.segments
        if len(segments) >= 3 and segments[0] == CLUSTER_SEGMENT:
            return "/".join(segments[2:])
        return None

    def is_under(self, other: SpiffeId) -> bool:
        """True when this ID lies strictly below `other` (same trust domain, longer path)."""
        return self.trust_domain == other.trust_domain and self.path.startswith(other.path + "/")


def cluster_id(td: str, cluster: str) -> SpiffeId:
    """`spiffe://<td>/cluster/<cluster>`, the identity of a cluster's intermediate CA."""
    validate_trust_domain(td)
    check_segment("cluster", cluster)
    return SpiffeId(td, f"/{CLUSTER_SEGMENT}/{cluster}")


def workload_id(td: str, cluster: str, name: str) -> SpiffeId:
    """`spiffe://<td>/cluster/<cluster>/<name>`, a workload's identity (a gateway, a control plane)."""
    validate_trust_domain(td)
    check_segment("cluster", cluster)
    check_segment("identity name", name)
    return SpiffeId(td, f"/{CLUSTER_SEGMENT}/{cluster}/{name}")
