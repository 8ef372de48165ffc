"""The `[tracing]` table: off when absent, defaults, and one-line errors naming the field.

Needs no OpenTelemetry: the table is read by `gateway.config`, which never imports it."""

from __future__ import annotations

import pytest

from gateway.config import TracingConfig, tracing_options
from gateway.errors import ConfigInvalid
from gateway.request_policy import traffic_options


def test_absent_or_disabled_tracing_is_off():
    assert tracing_options({}) is None
    assert tracing_options({"tracing": {"enabled": False}}) is None


def test_defaults_and_the_traces_url():
    config = tracing_options({"tracing": {}})
    assert config == TracingConfig()
    assert config.otlp_endpoint == "http://127.0.0.1:4318" and config.sample_ratio == 1.0
    assert config.traces_url == "http://127.0.0.1:4318/v1/traces"
    full = tracing_options({"tracing": {"otlp_endpoint": "https://collector.example:4318/otlp/v1/traces",
                                        "service_name": "edge", "sample_ratio": 0, "headers": {"X-Tenant": "a"}}})
    assert full.traces_url == "https://collector.example:4318/otlp/v1/traces"  # already a traces URL
    assert full.sample_ratio == 0.0 and full.service_name == "edge" and dict(full.headers) == {"x-tenant": "a"}
    assert TracingConfig(otlp_endpoint="http://127.0.0.1:4318/base/").traces_url == \
        "http://127.0.0.1:4318/base/v1/traces"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"sample_ratio": 2}, "tracing.sample_ratio: 2 is not a number in [0, 1]"),
        ({"sample_ratio": -0.1}, "tracing.sample_ratio: -0.1 is not a number in [0, 1]"),
        ({"sample_ratio": "all"}, "tracing.sample_ratio: 'all' is not a number in [0, 1]"),
        ({"otlp_endpoint": "grpc://127.0.0.1:4317"},
         "tracing.otlp_endpoint: 'grpc://127.0.0.1:4317' is not an http:// or https:// URL"),
        ({"otlp_endpoint": "127.0.0.1:4318"},
         "tracing.otlp_endpoint: '127.0.0.1:4318' is not an http:// or https:// URL"),
        ({"otlp_endpoint": "http://127.0.0.1:99999"},
         "tracing.otlp_endpoint: 'http://127.0.0.1:99999' is not an http:// or https:// URL"),
        ({"otlp_endpoint": 4318}, "tracing.otlp_endpoint: 4318 is not an http:// or https:// URL"),
        ({"service_name": ""}, "tracing.service_name: '' is not a non-empty string"),
        ({"headers": {"bad header": "x"}}, "tracing.headers: 'bad header' is not a valid header name"),
        ({"headers": {"x-key": "a\nb"}}, "tracing.headers.x-key: 'a\\nb' is not a header value"),
        ({"headers": "x"}, 'tracing.headers: must be a table of header = "value"'),
        ({"export_timeout_s": 0}, "tracing.export_timeout_s: 0 is not a positive number of seconds"),
        ({"enabled": "yes"}, "tracing.enabled: 'yes' is not true or false"),
        ({"endpoint": "http://x"}, "tracing.endpoint: unknown setting (known: enabled, otlp_endpoint,"),
    ],
)
def test_bad_tracing_tables_are_one_line_errors_naming_the_field(section, message):
    with pytest.raises(ConfigInvalid) as caught:
        tracing_options({"tracing": section})
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_the_gateway_command_refuses_a_bad_tracing_table_with_its_traffic_options(tmp_path):
    with pytest.raises(ConfigInvalid, match=r"^tracing.sample_ratio: 2 is not a number in \[0, 1\]$"):
        traffic_options({"tracing": {"sample_ratio": 2}}, tmp_path)
    with pytest.raises(ConfigInvalid, match=r"^tracing: \[tracing\] must be a table$"):
        traffic_options({"tracing": "on"}, tmp_path)
