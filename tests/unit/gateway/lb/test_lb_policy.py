"""Per-service policy from TOML: defaults with nothing written, one-line errors naming the field."""

from __future__ import annotations

import tomllib

import pytest

from gateway.errors import ConfigInvalid
from gateway.lb.policy import (
    FailoverPolicy,
    HealthCheckPolicy,
    OutlierPolicy,
    RetryPolicy,
    ServicePolicy,
    TimeoutPolicy,
)

CONFIG = """
[policies."checkout.shop"]
failover = ["eu-west", "ap-south"]

[policies."checkout.shop".outlier]
consecutive_5xx = 7
base_ejection_s = 10

[policies."checkout.shop".retry]
attempts = 2
retry_on = "connect-failure,503"

[policies."checkout.shop".timeout]
per_try_timeout_s = 0          # disabled
request_timeout_s = 30.0

[policies."cart.shop".failover]
regions = ["us-west"]
panic_threshold_percent = 0
"""


def test_policies_table_from_toml():
    policies = ServicePolicy.from_policies(tomllib.loads(CONFIG)["policies"])
    checkout = policies["checkout.shop"]
    assert checkout.failover.regions == ("eu-west", "ap-south")
    assert checkout.outlier == OutlierPolicy(consecutive_5xx=7, base_ejection_s=10.0)
    assert checkout.retry.attempts == 2
    assert checkout.retry.retry_on == ("connect-failure", "503")
    assert checkout.timeout == TimeoutPolicy(per_try_timeout_s=None, request_timeout_s=30.0)
    assert checkout.health_check == HealthCheckPolicy()
    cart = policies["cart.shop"]
    assert cart.failover == FailoverPolicy(regions=("us-west",), panic_threshold_percent=0.0)


def test_no_policy_at_all_gives_the_defaults():
    policy = ServicePolicy.from_mapping("echo.demo", None)
    assert policy == ServicePolicy()
    assert policy.failover.overprovisioning_factor == 1.4
    assert policy.outlier.consecutive_gateway_errors == 3
    assert policy.retry.attempts == 3
    assert policy.health_check.enabled
    assert ServicePolicy.from_policies(None) == {}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {"outlier": {"consecutive_5xx": -1}},
            'policy "checkout.shop": outlier.consecutive_5xx: -1 is not an integer >= 0',
        ),
        (
            {"outlier": {"consecutive_5xx": True}},
            'policy "checkout.shop": outlier.consecutive_5xx: True is not an integer >= 0',
        ),
        (
            {"outlier": {"max_ejection_percent": 150}},
            'policy "checkout.shop": outlier.max_ejection_percent: 150 is not an integer in 0-100',
        ),
        (
            {"outlier": {"base_ejection_s": 60, "max_ejection_s": 30}},
            'policy "checkout.shop": outlier: max_ejection_s 30 is below base_ejection_s 60',
        ),
        (
            {"outliers": {}},
            'policy "checkout.shop": outliers: unknown section (known: circuit_breaker, failover, health_check, '
            "outlier, peer_probe, retry, timeout)",
        ),
        (
            {"retry": {"atempts": 2}},
            'policy "checkout.shop": retry.atempts: unknown field (known: attempts, budget_percent, '
            "idempotent_methods, min_retry_concurrency, prefer_other_locality, retry_non_idempotent, retry_on)",
        ),
        (
            {"retry": {"retry_on": ["connect-failure", "timeouts"]}},
            "policy \"checkout.shop\": retry.retry_on: 'timeouts' is not one of connect-failure, reset, 503, "
            "gateway-error, 5xx",
        ),
        ({"retry": {"attempts": 0}}, 'policy "checkout.shop": retry.attempts: 0 is not an integer in 1-10'),
        (
            {"timeout": {"connect_timeout_s": "1s"}},
            "policy \"checkout.shop\": timeout.connect_timeout_s: '1s' is not a number",
        ),
        (
            {"timeout": {"request_timeout_s": -2}},
            'policy "checkout.shop": timeout.request_timeout_s: -2.0 is not a number > 0',
        ),
        (
            {"health_check": {"interval_s": 1, "timeout_s": 2}},
            'policy "checkout.shop": health_check: timeout_s 2 is longer than interval_s 1',
        ),
        (
            {"health_check": {"path": "healthz"}},
            "policy \"checkout.shop\": health_check.path: 'healthz' is not a path starting with '/' (or '' for a TCP "
            "connect check)",
        ),
        (
            {"failover": ["eu-west", "eu-west"]},
            "policy \"checkout.shop\": failover.regions: ['eu-west', 'eu-west'] names a region twice",
        ),
        (
            {"failover": ["EU West"]},
            "policy \"checkout.shop\": failover.regions: 'EU West' is not a region name (lower-case letters, digits and '-')",
        ),
        ({"failover": "eu-west"}, "policy \"checkout.shop\": failover: 'eu-west' is not a table"),
        (
            {"failover": {"overprovisioning_factor": 0.5}},
            'policy "checkout.shop": failover.overprovisioning_factor: 0.5 is not a number >= 1 and <= 10',
        ),
        (
            {"circuit_breaker": {"max_requests": 0}},
            'policy "checkout.shop": circuit_breaker.max_requests: 0 is not an integer >= 1',
        ),
        (
            {"peer_probe": {"rtt_alpha": 0}},
            'policy "checkout.shop": peer_probe.rtt_alpha: 0.0 is not a number > 0 and <= 1',
        ),
        ("fast", "policy \"checkout.shop\": 'fast' is not a table"),
    ],
)
def test_bad_policy_is_one_line_naming_the_field(table, message):
    with pytest.raises(ConfigInvalid) as info:
        ServicePolicy.from_mapping("checkout.shop", table)
    assert str(info.value) == message
    assert "\n" not in str(info.value)


def test_policies_must_be_a_table():
    with pytest.raises(ConfigInvalid, match=r"^policies: \[1\] is not a table$"):
        ServicePolicy.from_policies([1])


def test_direct_construction_is_validated_too():
    with pytest.raises(ConfigInvalid):
        OutlierPolicy(base_ejection_s=10, max_ejection_s=1)


def test_idempotent_methods_are_upper_cased():
    policy = ServicePolicy.from_mapping("a.b", {"retry": {"idempotent_methods": ["get", "post"]}})
    assert policy.retry.idempotent_methods == frozenset({"GET", "POST"})
    assert RetryPolicy().idempotent_methods >= {"GET", "PUT", "DELETE"}


def test_envoy_defaults_are_what_envoy_ships():
    envoy = ServicePolicy.envoy_defaults()
    assert (envoy.outlier.interval_s, envoy.outlier.consecutive_5xx, envoy.outlier.base_ejection_s) == (
        10.0,
        5,
        30.0,
    )
    assert envoy.outlier.max_ejection_percent == 10
    assert envoy.outlier.consecutive_gateway_errors == 0
    assert not envoy.health_check.enabled
