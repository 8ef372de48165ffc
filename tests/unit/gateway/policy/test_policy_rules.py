"""Route rules as an operator writes them: the TOML shape parses, and every bad rule is refused with
one line naming the service and the rule."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import ConfigInvalid
from gateway.policy.rules import RouteRule, RoutesConfig, ServiceRoutes
from registry.model import Endpoint, Locality

CANARY_TOML = """
[[routes."checkout.shop"]]
name = "canary"
match = { path_prefix = "/api", headers = { "x-user" = { exact = "beta" } }, source_cluster = "east-1" }
split = [ { subset = { version = "v1" }, weight = 90 }, { subset = { version = "v2" }, weight = 10 } ]
request_headers = { add = { "x-canary" = "1" }, remove = ["x-debug"] }
response_headers = { set = { "x-served-by" = "isthmus" } }
when_leaving_for = { region = "eu-west", request_headers = { set = { "x-isthmus-region" = "eu-west" } } }
rewrite_prefix = "/v2/api"
timeout_s = 2.0
retry = { attempts = 3, per_try_timeout_s = 0.5, retry_on = ["connect-failure", "503"] }
fault = { delay = { percent = 10, seconds = 0.2 }, abort = { percent = 5, status = 503 }, source_cluster = "east-2" }

[[routes."checkout.shop"]]
name = "admin"
match = { path = "/admin", method = ["GET", "HEAD"], source_spiffe_id = "spiffe://mesh.example/cluster/east-*/*" }
subset = { version = "v1" }
"""


def endpoint(service: str, version: str, cluster: str = "east-1") -> Endpoint:
    return Endpoint(
        service=service,
        cluster=cluster,
        address="127.0.1.10",
        port=8080 + len(version),
        locality=Locality("us-east", "us-east-1a"),
        labels={"version": version},
    )


def parse(rules: list[dict], service: str = "checkout.shop") -> RoutesConfig:
    return RoutesConfig.from_mapping({service: rules})


def test_the_documented_toml_parses_into_the_values_the_gateway_uses():
    routes = RoutesConfig.from_mapping(tomllib.loads(CANARY_TOML)["routes"])
    canary, admin = routes.rules_of("checkout.shop")

    assert canary.name == "canary"
    assert canary.match.path.kind == "prefix" and canary.match.path.value == "/api"
    assert canary.match.source_cluster == "east-1"
    assert [(arm.labels, arm.weight) for arm in canary.split] == [
        ((("version", "v1"),), 90),
        ((("version", "v2"),), 10),
    ]
    assert canary.request_headers.always.add == (("x-canary", "1"),)
    assert canary.request_headers.always.remove == ("x-debug",)
    assert canary.request_headers.when[0][:2] == (None, "eu-west")
    assert canary.response_headers.always.set == (("x-served-by", "isthmus"),)
    assert canary.rewrite_prefix == "/v2/api"
    assert canary.timeout_s == 2.0
    assert (canary.retry.attempts, canary.retry.per_try_timeout_s, canary.retry.retry_on) == (
        3,
        0.5,
        ("connect-failure", "503"),
    )
    assert (canary.fault.delay_percent, canary.fault.delay_s) == (10.0, 0.2)
    assert (canary.fault.abort_percent, canary.fault.abort_status, canary.fault.source_cluster) == (
        5.0,
        503,
        "east-2",
    )

    assert admin.match.methods == {"GET", "HEAD"}
    assert admin.match.source_spiffe_id.matches("spiffe://mesh.example/cluster/east-2/gateway")
    assert not admin.match.source_spiffe_id.matches("spiffe://mesh.example/cluster/west-1/gateway")
    assert not admin.match.source_spiffe_id.matches("spiffe://mesh.example/cluster/east-2/ns/a/sa/b")
    assert [arm.labels for arm in admin.split] == [(("version", "v1"),)]


def test_a_rule_without_retry_on_gets_the_failover_policy_default():
    rule = RouteRule.from_mapping("checkout.shop", 1, {"name": "r", "retry": {"attempts": 2}})
    assert rule.retry.retry_on == ("connect-failure", "reset", "503", "gateway-error")
    assert rule.retry.per_try_timeout_s is None


def test_no_routes_section_means_no_rules():
    assert RoutesConfig.from_mapping(None).services == {}
    assert RoutesConfig.from_mapping({}).rules_of("checkout.shop") == ()


BAD_RULES = [
    (
        {"name": "canary", "match": {"path_regex": "/api/("}},
        "checkout.shop route \"canary\": match.path_regex: invalid regular expression '/api/(': "
        "missing ), unterminated subpattern at position 5",
    ),
    (
        {"name": "hdr", "match": {"headers": {"x-user": {"regex": "[beta"}}}},
        "checkout.shop route \"hdr\": match.headers.x-user.regex: invalid regular expression '[beta': "
        "unterminated character set at position 0",
    ),
    (
        {
            "name": "canary",
            "split": [
                {"subset": {"version": "v1"}, "weight": 90},
                {"subset": {"version": "v2"}, "weight": 5},
            ],
        },
        'checkout.shop route "canary": weights sum to 95, not 100',
    ),
    (
        {"name": "canary", "split": [{"subset": {"version": "v1"}, "weight": 101}]},
        'checkout.shop route "canary": split[0].weight: 101 is not an integer in 0-100',
    ),
    (
        {
            "name": "canary",
            "subset": {"version": "v1"},
            "split": [{"subset": {"version": "v1"}, "weight": 100}],
        },
        'checkout.shop route "canary": subset and split cannot be combined',
    ),
    (
        {"name": "h", "match": {"headers": {"x user": {"exact": "a"}}}},
        "checkout.shop route \"h\": match.headers: header name 'x user' is not an RFC 9110 token",
    ),
    (
        {"name": "h", "request_headers": {"add": {"x-caf\u00e9": "1"}}},
        "checkout.shop route \"h\": request_headers.add: header name 'x-caf\u00e9' is not an RFC 9110 token",
    ),
    (
        {"name": "h", "response_headers": {"remove": ["x:debug"]}},
        "checkout.shop route \"h\": response_headers.remove: header name 'x:debug' is not an RFC 9110 token",
    ),
    (
        {"name": "h", "request_headers": {"set": {"x-a": "1\r\nx-evil: 1"}}},
        "checkout.shop route \"h\": request_headers.set.x-a: '1\\r\\nx-evil: 1' is not a valid header value",
    ),
    (
        {"name": "h", "request_headers": {"set": {"host": "elsewhere"}}},
        "checkout.shop route \"h\": request_headers.set: header 'host' belongs to the protocol, not to route rules",
    ),
    (
        {"name": "typo", "rewrite_prefx": "/v2"},
        "checkout.shop route \"typo\": rule: unknown key 'rewrite_prefx' (known: name, match, subset, split, "
        "request_headers, response_headers, when_leaving_for, rewrite_prefix, timeout_s, retry, fault)",
    ),
    (
        {"name": "rw", "rewrite_prefix": "/v2"},
        'checkout.shop route "rw": rewrite_prefix: needs match.path_prefix or match.path to know what to replace',
    ),
    (
        {"name": "m", "match": {"path_prefix": "/a", "path": "/a"}},
        'checkout.shop route "m": match: path and path_prefix cannot be combined',
    ),
    (
        {"name": "m", "match": {"path_prefix": "api"}},
        "checkout.shop route \"m\": match.path_prefix: 'api' is not a path (starts with '/', no query, no spaces)",
    ),
    (
        {"name": "m", "match": {"method": "GE T"}},
        "checkout.shop route \"m\": match.method: 'GE T' is not an HTTP method (RFC 9110 token)",
    ),
    (
        {"name": "m", "match": {"source_cluster": "East_1"}},
        "checkout.shop route \"m\": match.source_cluster: 'East_1' is not a cluster name",
    ),
    (
        {"name": "m", "match": {"source_spiffe_id": "mesh.example/cluster/*"}},
        "checkout.shop route \"m\": match.source_spiffe_id: 'mesh.example/cluster/*' is not a spiffe:// ID pattern",
    ),
    (
        {"name": "t", "timeout_s": 0},
        'checkout.shop route "t": timeout_s: 0 is not in (0, 3600]',
    ),
    (
        {"name": "t", "retry": {"attempts": 0}},
        'checkout.shop route "t": retry.attempts: 0 is not an integer in 1-10',
    ),
    (
        {"name": "t", "retry": {"attempts": 2, "retry_on": ["teapot"]}},
        "checkout.shop route \"t\": retry.retry_on: 'teapot' is not one of connect-failure, reset, 503, "
        "gateway-error, 5xx",
    ),
    (
        {"name": "t", "timeout_s": 1.0, "retry": {"attempts": 2, "per_try_timeout_s": 1.5}},
        'checkout.shop route "t": retry.per_try_timeout_s 1.5 is longer than timeout_s 1',
    ),
    (
        {"name": "f", "fault": {"delay": {"percent": 120, "seconds": 1}}},
        'checkout.shop route "f": fault.delay.percent: 120 is not in [0, 100]',
    ),
    (
        {"name": "f", "fault": {"abort": {"percent": 5, "status": 200}}},
        'checkout.shop route "f": fault.abort.status: 200 is not an HTTP error status (400-599)',
    ),
    (
        {"name": "f", "fault": {"source_cluster": "east-2"}},
        'checkout.shop route "f": fault: needs a delay or an abort table',
    ),
    (
        {"name": "w", "when_leaving_for": {"request_headers": {"add": {"x-a": "1"}}}},
        'checkout.shop route "w": when_leaving_for: name a cluster or a region',
    ),
    (
        {"match": {"path": "/a"}},
        "checkout.shop route #1: name: None is not a rule name (1-100 printable characters)",
    ),
]


@pytest.mark.parametrize(("rule", "message"), BAD_RULES, ids=[m.split(": ", 1)[1][:40] for _, m in BAD_RULES])
def test_a_bad_rule_is_refused_with_one_line_naming_service_and_rule(rule, message):
    with pytest.raises(ConfigInvalid) as caught:
        parse([rule])
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


def test_the_second_of_two_rules_with_the_same_name_is_refused():
    with pytest.raises(
        ConfigInvalid, match='^checkout.shop route "a": another rule of this service has the same name$'
    ):
        parse([{"name": "a", "match": {"path": "/x"}}, {"name": "a", "match": {"path": "/y"}}])


def test_a_malformed_service_name_is_refused():
    with pytest.raises(
        ConfigInvalid, match=r"^routes\.'Checkout': service: 'Checkout' is not name\.namespace"
    ):
        RoutesConfig.from_mapping({"Checkout": [{"name": "a"}]})
    with pytest.raises(ConfigInvalid, match=r'^routes."checkout.shop": must be an array of tables'):
        RoutesConfig.from_mapping({"checkout.shop": "canary"})


UNREACHABLE = [
    ({"name": "all"}, {"name": "later", "match": {"path": "/api"}}),
    ({"name": "all", "match": {}}, {"name": "later", "match": {"headers": {"x-user": "beta"}}}),
    (
        {"name": "api", "match": {"path_prefix": "/api"}},
        {"name": "later", "match": {"path_prefix": "/api/v1"}},
    ),
    ({"name": "api", "match": {"path_prefix": "/api"}}, {"name": "later", "match": {"path": "/api/orders"}}),
    (
        {"name": "api", "match": {"path": "/api"}},
        {"name": "later", "match": {"path": "/api", "method": "GET"}},
    ),
    (
        {"name": "api", "match": {"path_regex": "/api/[0-9]+"}},
        {"name": "later", "match": {"path": "/api/42", "source_cluster": "east-1"}},
    ),
    (
        {"name": "reads", "match": {"path_prefix": "/", "method": ["GET", "HEAD"]}},
        {"name": "later", "match": {"path_prefix": "/api", "method": "GET"}},
    ),
    (
        {"name": "beta", "match": {"headers": {"x-user": {"prefix": "be"}}}},
        {"name": "later", "match": {"path": "/a", "headers": {"x-user": {"exact": "beta"}}}},
    ),
    (
        {"name": "has-user", "match": {"headers": {"x-user": {"present": True}}}},
        {"name": "later", "match": {"headers": {"x-user": {"regex": "b.*"}}}},
    ),
    (
        {"name": "east", "match": {"source_spiffe_id": "spiffe://mesh.example/cluster/east-*/**"}},
        {"name": "later", "match": {"source_spiffe_id": "spiffe://mesh.example/cluster/east-1/gateway"}},
    ),
]


@pytest.mark.parametrize(
    ("earlier", "later"), UNREACHABLE, ids=[str(e.get("match", "catch-all")) for e, _ in UNREACHABLE]
)
def test_a_rule_shadowed_by_an_earlier_broader_rule_is_refused_as_unreachable(earlier, later):
    with pytest.raises(ConfigInvalid) as caught:
        parse([earlier, later])
    assert str(caught.value) == (
        f'checkout.shop route "later": unreachable: route "{earlier["name"]}" comes first and matches every '
        "request this one matches"
    )


REACHABLE = [
    (
        {"name": "v1", "match": {"path_prefix": "/api/v1"}},
        {"name": "later", "match": {"path_prefix": "/api"}},
    ),
    ({"name": "beta", "match": {"headers": {"x-user": "beta"}}}, {"name": "later"}),
    ({"name": "get", "match": {"path": "/a", "method": "GET"}}, {"name": "later", "match": {"path": "/a"}}),
    ({"name": "east", "match": {"source_cluster": "east-1"}}, {"name": "later", "match": {"path": "/a"}}),
    (
        {"name": "no-user", "match": {"headers": {"x-user": {"present": False}}}},
        {"name": "later", "match": {"headers": {"x-user": "beta"}}},
    ),
    (
        {"name": "api", "match": {"path_prefix": "/api/"}},
        {"name": "later", "match": {"path": "/api"}},
    ),
]


@pytest.mark.parametrize(("earlier", "later"), REACHABLE, ids=[e["name"] for e, _ in REACHABLE])
def test_overlapping_rules_that_each_take_some_requests_are_accepted(earlier, later):
    routes = parse([earlier, later])
    assert [r.name for r in routes.rules_of("checkout.shop")] == [earlier["name"], "later"]


def test_rules_are_checked_against_the_catalog_services_and_endpoint_labels():
    routes = parse(
        [
            {
                "name": "canary",
                "split": [
                    {"subset": {"version": "v1"}, "weight": 90},
                    {"subset": {"version": "v2"}, "weight": 10},
                ],
            }
        ]
    )
    endpoints = [endpoint("checkout.shop", "v1"), endpoint("checkout.shop", "v2", "west-1")]
    routes.check_against(["checkout.shop"], endpoints)  # accepted

    with pytest.raises(ConfigInvalid) as caught:
        routes.check_against(
            ["checkout.shop"], [endpoint("checkout.shop", "v1"), endpoint("cart.shop", "v2")]
        )
    assert (
        str(caught.value)
        == 'checkout.shop route "canary": subset version=v2 matches no endpoint of checkout.shop'
    )

    with pytest.raises(ConfigInvalid) as caught:
        routes.check_against(["cart.shop"], endpoints)
    assert str(caught.value) == 'checkout.shop route "canary": no such service in the catalog'


def test_service_routes_refuse_a_rule_of_another_service():
    rule = RouteRule.from_mapping("cart.shop", 1, {"name": "x"})
    with pytest.raises(ConfigInvalid, match='^cart.shop route "x": belongs to cart.shop, not checkout.shop$'):
        ServiceRoutes("checkout.shop", (rule,))


def test_rules_are_checked_against_a_whole_catalog():
    from registry.model import Catalog, Service

    v1 = endpoint("checkout.shop", "v1")
    catalog = Catalog(
        "east-1", 7, services={"checkout.shop": Service("checkout", "shop")}, endpoints={v1.id: v1}
    )
    parse([{"name": "v1", "subset": {"version": "v1"}}]).check_catalog(catalog)
    with pytest.raises(
        ConfigInvalid, match='^checkout.shop route "v2": subset version=v2 matches no endpoint'
    ):
        parse([{"name": "v2", "subset": {"version": "v2"}}]).check_catalog(catalog)


def test_routes_and_access_log_sections_of_a_cluster_config_file(tmp_path):
    from federation.config import ClusterConfig
    from gateway.policy.accesslog import AccessLogConfig

    path = tmp_path / "east-1.toml"
    path.write_text(
        '[cluster]\nname = "east-1"\nregion = "us-east"\nzones = ["us-east-1a"]\n\n'
        '[access_log]\nsample_rate = 0.5\nfields = ["time", "trace_id", "response_code"]\n' + CANARY_TOML
    )
    config = ClusterConfig.from_toml(path)
    routes = RoutesConfig.from_mapping(config.raw.get("routes"))
    assert [r.name for r in routes.rules_of("checkout.shop")] == ["canary", "admin"]
    access_log = AccessLogConfig.from_mapping(config.raw.get("access_log"))
    assert (access_log.sample_rate, access_log.fields) == (0.5, ("time", "trace_id", "response_code"))


toml_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 200)
    | st.floats(allow_nan=True)
    | st.text(max_size=6)
    | st.sampled_from(["/api", "GET", "x-user", "v1", "east-1", "spiffe://mesh.example/*", "(", "503"]),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "name",
                    "match",
                    "path",
                    "path_prefix",
                    "path_regex",
                    "method",
                    "headers",
                    "exact",
                    "prefix",
                    "regex",
                    "present",
                    "subset",
                    "split",
                    "weight",
                    "version",
                    "request_headers",
                    "add",
                    "set",
                    "remove",
                    "when_leaving_for",
                    "region",
                    "cluster",
                    "rewrite_prefix",
                    "timeout_s",
                    "retry",
                    "attempts",
                    "retry_on",
                    "per_try_timeout_s",
                    "fault",
                    "delay",
                    "abort",
                    "percent",
                    "seconds",
                    "status",
                    "source_cluster",
                    "source_spiffe_id",
                    "x-user",
                ]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


RULE_KEYS = [
    "match",
    "subset",
    "split",
    "request_headers",
    "response_headers",
    "when_leaving_for",
    "rewrite_prefix",
    "timeout_s",
    "retry",
    "fault",
]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(toml_values | st.dictionaries(st.sampled_from(RULE_KEYS), toml_values, max_size=4), max_size=3)
)
def test_any_malformed_rule_gives_a_one_line_config_error_never_a_traceback(rules):
    rules = [
        {"name": f"r{i}", **rule} if isinstance(rule, dict) and i % 2 == 0 else rule
        for i, rule in enumerate(rules)
    ]
    try:
        RoutesConfig.from_mapping({"checkout.shop": rules})
    except ConfigInvalid as exc:
        assert "\n" not in str(exc) and str(exc).startswith(("checkout.shop route", "routes."))
