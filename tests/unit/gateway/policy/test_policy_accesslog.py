"""Access-log lines: valid JSON with every configured field present, sampling within tolerance and the
same at every gateway of a trace, errors always kept, and bad config refused in one line."""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import ConfigInvalid
from gateway.policy.accesslog import ALL_FIELDS, AccessLogConfig, AccessLogRecord, format_line
from gateway.policy.testing import sample_record as http_record


def test_an_http_line_is_json_with_every_field_in_order():
    line = format_line(http_record())
    assert "\n" not in line
    body = json.loads(line)
    assert list(body) == list(ALL_FIELDS)
    assert body["time"] == "2025-11-24T16:00:00.123Z"
    assert body["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert (body["destination_cluster"], body["endpoint"], body["locality_priority"]) == (
        "west-1",
        "west-1/127.0.3.10:8080",
        2,
    )
    assert (body["attempts"], body["response_code"], body["reason"]) == (2, 200, None)
    assert (body["bytes_in"], body["bytes_out"]) == (120, 5120)
    assert (body["duration_ms"], body["upstream_duration_ms"]) == (12.346, 11.0)


def test_a_tcp_connection_line_has_every_field_with_nulls_for_what_tcp_lacks():
    record = AccessLogRecord(
        time=1_764_000_000.0,
        kind="tcp",
        gateway="west-1",
        listener="eastwest",
        source_identity="spiffe://mesh.example/cluster/east-1/gateway",
        source_cluster="east-1",
        destination_service="db.shop",
        destination_cluster="west-1",
        endpoint="west-1/127.0.3.20:5432",
        locality_priority=0,
        attempts=1,
        bytes_in=4096,
        bytes_out=1 << 20,
        duration_ms=float("nan"),
    )
    body = json.loads(format_line(record))
    assert set(body) == set(ALL_FIELDS)
    assert body["kind"] == "tcp" and body["response_code"] is None and body["method"] is None
    assert body["time"] == "2025-11-24T16:00:00.000Z"
    assert body["duration_ms"] is None  # a non-finite duration is null, never invalid JSON


@given(
    st.text(max_size=30),
    st.floats(min_value=0, max_value=4e9, allow_nan=False),
    st.one_of(st.none(), st.integers(100, 599)),
    st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
)
def test_any_record_gives_one_parseable_line(path, when, status, duration):
    record = http_record(
        path=path, time=when, response_code=status, duration_ms=duration, reason=path or None
    )
    line = format_line(record)
    assert "\n" not in line
    body = json.loads(line)
    assert body["path"] == path and body["response_code"] == status
    assert len(body["time"]) == len("2025-11-24T16:00:00.123Z")


def test_the_field_set_is_configurable():
    config = AccessLogConfig.from_mapping({"fields": ["trace_id", "response_code", "time"]})
    assert json.loads(config.format(http_record())) == {
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "response_code": 200,
        "time": "2025-11-24T16:00:00.123Z",
    }
    assert json.loads(AccessLogConfig.from_mapping({"fields": ["reason"]}).format(http_record())) == {
        "reason": None
    }


# 4 binomial standard deviations, as in the route-table tests: a correct sampler fails ~6e-5 of the time.
N = 20_000


def random_trace_id(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


def test_sampling_keeps_the_configured_fraction_and_the_same_requests_at_every_gateway():
    east = AccessLogConfig.from_mapping({"sample_rate": 0.1})
    west = AccessLogConfig.from_mapping({"sample_rate": 0.1, "fields": ["trace_id"]})
    ids = random.Random(42)
    kept_east = kept_west = 0
    for _ in range(N):
        trace_id = random_trace_id(ids)
        a = east.should_log(http_record(trace_id=trace_id), random.Random(1))
        b = west.should_log(http_record(trace_id=trace_id, gateway="west-1"), random.Random(2))
        assert a == b  # decided by the trace id, not by each gateway's own draw
        kept_east += a
        kept_west += b
    assert abs(kept_east - N * 0.1) <= 4 * math.sqrt(N * 0.1 * 0.9)


def test_without_a_trace_id_the_rng_decides():
    config = AccessLogConfig.from_mapping({"sample_rate": 0.25})
    rng = random.Random(9)
    kept = sum(config.should_log(http_record(trace_id=None), rng) for _ in range(N))
    assert abs(kept - N * 0.25) <= 4 * math.sqrt(N * 0.25 * 0.75)


def test_errors_are_kept_whatever_the_rate_unless_told_otherwise():
    rng = random.Random(1)
    none = AccessLogConfig.from_mapping({"sample_rate": 0})
    assert not none.should_log(http_record(), rng)
    assert none.should_log(http_record(response_code=503), rng)
    assert none.should_log(http_record(response_code=None, kind="tcp", reason="upstream-connect"), rng)
    strict = AccessLogConfig.from_mapping({"sample_rate": 0, "always_log_errors": False})
    assert not strict.should_log(http_record(response_code=503), rng)
    assert AccessLogConfig().should_log(http_record(), rng)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {"fields": ["time", "colour"]},
            "access_log.fields: 'colour' is not one of " + ", ".join(ALL_FIELDS),
        ),
        ({"fields": ["time", "time"]}, "access_log.fields: a field is listed twice"),
        ({"fields": []}, "access_log.fields: must be a non-empty list of field names"),
        ({"sample_rate": 1.5}, "access_log.sample_rate: 1.5 is not a number in [0, 1]"),
        ({"always_log_errors": "yes"}, "access_log.always_log_errors: 'yes' is not true or false"),
        ({"max_bytes": 10}, "access_log.max_bytes: 10 is not an integer >= 4096"),
        ({"backups": -1}, "access_log.backups: -1 is not an integer >= 0"),
        ({"path": ""}, "access_log.path: '' is not a file path or '-'"),
        (
            {"sample": 0.1},
            "access_log: unknown key 'sample' (known: fields, sample_rate, always_log_errors, path, "
            "max_bytes, backups)",
        ),
        ("everything", "access_log: must be a table"),
    ],
)
def test_bad_access_log_config_is_refused_in_one_line(table, message):
    with pytest.raises(ConfigInvalid) as caught:
        AccessLogConfig.from_mapping(table)
    assert str(caught.value) == message


def test_defaults_log_everything_to_stdout():
    config = AccessLogConfig.from_mapping(None)
    assert (config.fields, config.sample_rate, config.path) == (ALL_FIELDS, 1.0, "-")
