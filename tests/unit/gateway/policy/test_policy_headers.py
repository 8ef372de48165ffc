"""Header rules on the request and on the response, applied only where their destination conditions hold."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from gateway.policy.table import RequestView, RouteTable, apply_header_edits

SERVICE = "checkout.shop"


def decision_for(rule: dict):
    table = RouteTable.compile({SERVICE: [{"name": "edit", **rule}]})
    return table.match(SERVICE, RequestView("GET", "/", []), random.Random(1))


CROSS_REGION = decision_for(
    {
        "request_headers": {"add": {"x-canary": "1"}, "remove": ["x-debug"], "set": {"x-env": "prod"}},
        "response_headers": {"set": {"x-served-by": "isthmus"}, "remove": ["server"]},
        "when_leaving_for": [
            {"region": "eu-west", "request_headers": {"set": {"x-isthmus-region": "eu-west"}}},
            {
                "cluster": "west-1",
                "response_headers": {"add": {"x-crossed": "west-1"}},
                "request_headers": {"remove": ["x-internal"]},
            },
        ],
    }
)

REQUEST = [
    ("host", "checkout.shop"),
    ("X-Debug", "1"),
    ("x-env", "dev"),
    ("x-env", "staging"),
    ("x-internal", "yes"),
    ("accept", "*/*"),
]


def test_request_edits_apply_and_the_region_rule_only_when_leaving_for_that_region():
    local = apply_header_edits(REQUEST, CROSS_REGION.request_headers, "east-2", "us-east")
    assert local == [
        ("host", "checkout.shop"),
        ("x-internal", "yes"),
        ("accept", "*/*"),
        ("x-env", "prod"),
        ("x-canary", "1"),
    ]

    to_eu = apply_header_edits(REQUEST, CROSS_REGION.request_headers, "west-1", "eu-west")
    assert ("x-isthmus-region", "eu-west") in to_eu
    assert all(name != "x-internal" for name, _ in to_eu)  # the west-1 rule holds too

    other_eu_cluster = apply_header_edits(REQUEST, CROSS_REGION.request_headers, "west-2", "eu-west")
    assert ("x-isthmus-region", "eu-west") in other_eu_cluster
    assert ("x-internal", "yes") in other_eu_cluster  # west-1 only


def test_response_edits_apply_on_the_way_back_with_the_same_conditions():
    response = [(":status", "200"), ("server", "upstream/1.0"), ("content-type", "text/plain")]
    local = apply_header_edits(response, CROSS_REGION.response_headers, "east-1", "us-east")
    assert local == [(":status", "200"), ("content-type", "text/plain"), ("x-served-by", "isthmus")]
    crossed = apply_header_edits(response, CROSS_REGION.response_headers, "west-1", "eu-west")
    assert crossed[-1] == ("x-crossed", "west-1")
    assert ("x-isthmus-region", "eu-west") not in crossed  # a request-side rule never touches responses


def test_bytes_blocks_get_bytes_edits():
    edited = apply_header_edits(
        [(b"x-debug", b"1"), (b"accept", b"*/*")], CROSS_REGION.request_headers, "west-1", "eu-west"
    )
    assert edited == [
        (b"accept", b"*/*"),
        (b"x-env", b"prod"),
        (b"x-canary", b"1"),
        (b"x-isthmus-region", b"eu-west"),
    ]


def test_no_edits_return_the_block_unchanged():
    plain = decision_for({})
    assert apply_header_edits(REQUEST, plain.request_headers, "west-1", "eu-west") == REQUEST
    assert apply_header_edits({"a": "1"}, plain.response_headers) == [("a", "1")]


header_blocks = st.lists(
    st.tuples(st.sampled_from(["x-debug", "X-Env", "x-keep", "accept"]), st.text(alphabet="abc", max_size=3)),
    max_size=8,
)


@given(
    header_blocks, st.sampled_from(["east-1", "west-1", None]), st.sampled_from(["us-east", "eu-west", None])
)
def test_edits_touch_only_the_headers_they_name(block, cluster, region):
    edited = apply_header_edits(block, CROSS_REGION.request_headers, cluster, region)
    untouched = [(n, v) for n, v in block if n.lower() in ("x-keep", "accept")]
    assert [(n, v) for n, v in edited if n.lower() in ("x-keep", "accept")] == untouched
    assert [v for n, v in edited if n.lower() == "x-env"] == ["prod"]
    assert not any(n.lower() == "x-debug" for n, _ in edited)
    assert (("x-isthmus-region", "eu-west") in edited) == (region == "eu-west")
