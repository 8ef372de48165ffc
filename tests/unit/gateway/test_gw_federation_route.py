"""The federation authority's rules: which requests are forwarded, and with which identity headers."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import GatewayConfig
from gateway.errors import ConfigInvalid
from gateway.federation_route import FEDERATION_PATH, forwarded_headers, is_federation_authority
from registry.model import Locality

VERIFIED = b"spiffe://mesh.example/cluster/west-1/control"


def test_a_caller_cannot_assert_an_identity_or_the_secret():
    caller = [(b"x-isthmus-peer-identity", b"spiffe://mesh.example/cluster/east-2/gateway"),
              (b"X-Forwarded-Client-Cert".lower(), b"URI=spiffe://mesh.example/cluster/east-2/gateway"),
              (b"x-isthmus-forward-secret", b"guess"), (b"content-length", b"999"), (b"accept", b"*/*")]  # fmt: skip
    out = forwarded_headers(caller, identity=VERIFIED, secret=b"s3cret", host=b"127.0.1.1:15010", body_length=None)
    assert [v for n, v in out if n == b"x-isthmus-peer-identity"] == [VERIFIED]
    assert [v for n, v in out if n == b"x-isthmus-forward-secret"] == [b"s3cret"]
    assert not any(n in (b"x-forwarded-client-cert", b"content-length") for n, _ in out)
    assert (b"accept", b"*/*") in out and out[0] == (b"host", b"127.0.1.1:15010")


@pytest.mark.parametrize(
    ("path", "forwarded"),
    [(b"/v1/federation/watch?peer=west-1&from=7", True), (b"/v1/federation/probe", True),
     (b"/v1/federation/redeem", True), (b"/v1/peers", False), (b"/v1/federation/../peers", False),
     (b"/v1/federation/", False), (b"/v1/federation/watch/extra", False), (b"/metrics", False)],
)  # fmt: skip
def test_only_federation_calls_are_forwarded(path, forwarded):
    assert bool(FEDERATION_PATH.fullmatch(path)) is forwarded


def test_the_federation_authority_with_or_without_port():
    assert is_federation_authority(b"federation.isthmus")
    assert is_federation_authority(b"Federation.Isthmus:15443")
    assert not is_federation_authority(b"federation.isthmus.evil")
    assert not is_federation_authority(b"hello.demo")


def test_the_control_api_must_be_loopback():
    class Contexts:
        server = client = None

    with pytest.raises(ConfigInvalid) as info:
        GatewayConfig.from_mapping({"control_api": "10.0.0.1:15010"}, cluster="east-1", locality=Locality("us-east", "us-east-1a"),
                                   trust_domain="mesh.example", base_dir=Path("/etc/isthmus"), contexts=Contexts())
    assert str(info.value) == "gateway.control_api: '10.0.0.1:15010' must be a loopback address (it serves local workloads only)"


def test_the_trusting_source_still_reports_the_wrapped_sources_staleness():
    from gateway.federation_route import trusting_peers

    class Source:
        stale_since = 12.5

    assert trusting_peers(Source(), contexts=None).stale_since == 12.5
