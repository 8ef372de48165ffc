"""SPIFFE ID parsing against the SPIFFE ID specification, with Hypothesis."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from certs.errors import InvalidSpiffeId, InvalidTrustDomain
from certs.spiffe import SpiffeId, cluster_id, validate_trust_domain, workload_id

# An independent oracle: the specification's grammar as one regular expression plus its limits.
ORACLE = re.compile(r"spiffe://[a-z0-9._-]+(/[A-Za-z0-9._-]+)*")


def oracle_valid(text: str) -> bool:
    if not ORACLE.fullmatch(text) or len(text.encode()) > 2048:
        return False
    rest = text[len("spiffe://") :]
    td, _, path = rest.partition("/")
    return len(td) <= 255 and all(seg not in (".", "..") for seg in path.split("/") if path)


trust_domains = st.text(string.ascii_lowercase + string.digits + ".-_", min_size=1, max_size=40)
segments = st.text(string.ascii_letters + string.digits + ".-_", min_size=1, max_size=20).filter(
    lambda s: s not in (".", "..")
)
paths = st.lists(segments, max_size=6).map(lambda segs: "".join("/" + s for s in segs))


@given(trust_domains, paths)
def test_valid_ids_parse_and_print_back(td, path):
    text = f"spiffe://{td}{path}"
    parsed = SpiffeId.parse(text)
    assert parsed.trust_domain == td
    assert parsed.path == path
    assert str(parsed) == text


@given(st.text(max_size=60))
@example("spiffe://mesh.example/a/./b")
@example("spiffe://mesh.example:8443/x")
@example("spiffe://mesh.example/x/")
def test_any_text_parses_exactly_when_the_grammar_allows(text):
    try:
        parsed = SpiffeId.parse(text)
    except InvalidSpiffeId as exc:
        assert not oracle_valid(text)
        assert "\n" not in str(exc)
    else:
        assert oracle_valid(text)
        assert str(parsed) == text


@given(st.text("abcAB09.-_/:?#@%", max_size=40))
def test_near_misses_after_the_scheme_parse_exactly_when_the_grammar_allows(rest):
    text = "spiffe://" + rest
    try:
        parsed = SpiffeId.parse(text)
    except InvalidSpiffeId:
        assert not oracle_valid(text)
    else:
        assert oracle_valid(text)
        assert str(parsed) == text


@given(trust_domains, paths)
def test_prefix_mutations_of_valid_ids_are_refused(td, path):
    for text in (f"SPIFFE://{td}{path}", f"spiffe:/{td}{path}", f"https://{td}{path}", f"{td}{path}"):
        with pytest.raises(InvalidSpiffeId, match="scheme must be 'spiffe://'"):
            SpiffeId.parse(text)


@given(trust_domains, st.lists(segments, min_size=1, max_size=4), st.sampled_from(list("!$%&'()*+,;=: ~^")))
def test_a_bad_character_in_the_path_is_refused(td, segs, bad):
    text = f"spiffe://{td}/" + "/".join(segs) + bad
    with pytest.raises(InvalidSpiffeId, match="path characters are limited"):
        SpiffeId.parse(text)


@given(trust_domains, paths)
def test_upper_case_trust_domain_is_refused(td, path):
    assume(any(c.isalpha() for c in td))
    with pytest.raises(InvalidSpiffeId, match="must be lower case"):
        SpiffeId.parse(f"spiffe://{td.upper()}{path}")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("spiffe://", "the trust domain is missing"),
        ("spiffe:///cluster/east-1", "the trust domain is missing"),
        ("spiffe://mesh.example:8443/cluster/east-1", "cannot carry a port"),
        ("spiffe://user@mesh.example/cluster/east-1", "cannot carry userinfo"),
        ("spiffe://mesh.example/cluster/east-1?x=1", "cannot carry a query"),
        ("spiffe://mesh.example?x=1", "cannot carry a query"),
        ("spiffe://mesh.example/cluster#frag", "cannot carry a fragment"),
        ("spiffe://mesh.example/cluster/", "cannot end with '/'"),
        ("spiffe://mesh.example/", "cannot end with '/'"),
        ("spiffe://mesh.example//cluster", "empty segments"),
        ("spiffe://mesh.example/cluster/./east-1", "'.' or '..' segments"),
        ("spiffe://mesh.example/cluster/..", "'.' or '..' segments"),
        ("spiffe://mesh.example/" + "a" * 2040, "longer than 2048 bytes"),
        ("spiffe://" + "a" * 256, "longer than 255 bytes"),
        ("spiffe://mesh.example/caf\u00e9", "path characters are limited"),
    ],
)
def test_each_rule_is_named_in_the_error(text, problem):
    with pytest.raises(InvalidSpiffeId, match=re.escape(problem)):
        SpiffeId.parse(text)


def test_cluster_and_workload_parts():
    assert SpiffeId.parse("spiffe://mesh.example/cluster/east-1").cluster == "east-1"
    assert SpiffeId.parse("spiffe://mesh.example/cluster/east-1").is_cluster_id
    gateway = SpiffeId.parse("spiffe://mesh.example/cluster/east-1/gateway")
    assert gateway.cluster == "east-1"
    assert gateway.workload == "gateway"
    assert not gateway.is_cluster_id
    assert gateway.is_under(cluster_id("mesh.example", "east-1"))
    assert not gateway.is_under(cluster_id("mesh.example", "east-10"))
    assert SpiffeId.parse("spiffe://mesh.example/cluster").cluster is None
    assert SpiffeId.parse("spiffe://mesh.example/ns/east-1").cluster is None
    assert SpiffeId.parse("spiffe://mesh.example").cluster is None


def test_mesh_names():
    assert str(cluster_id("mesh.example", "east-1")) == "spiffe://mesh.example/cluster/east-1"
    assert (
        str(workload_id("mesh.example", "west-1", "gateway"))
        == "spiffe://mesh.example/cluster/west-1/gateway"
    )
    with pytest.raises(InvalidSpiffeId, match="cluster 'east/1'"):
        cluster_id("mesh.example", "east/1")
    with pytest.raises(InvalidSpiffeId, match="identity name '..'"):
        workload_id("mesh.example", "east-1", "..")
    with pytest.raises(InvalidTrustDomain):
        workload_id("Mesh.example", "east-1", "gateway")


@pytest.mark.parametrize(
    ("td", "problem"),
    [
        ("Mesh.example", "must be lower case"),
        ("mesh.example:443", "cannot carry a port"),
        ("", "missing"),
        ("mesh example", "limited to a-z 0-9"),
        (".mesh.example", "cannot start or end with '.'"),
        ("mesh..example", "empty label"),
        ("x" * 256, "longer than 255 bytes"),
    ],
)
def test_invalid_trust_domains_are_named(td, problem):
    with pytest.raises(InvalidTrustDomain, match=re.escape(problem)) as exc:
        validate_trust_domain(td)
    assert str(exc.value).startswith("trust domain ")


def test_valid_trust_domain_is_returned():
    assert validate_trust_domain("mesh.example") == "mesh.example"
    assert validate_trust_domain("prod_mesh-1.internal") == "prod_mesh-1.internal"
