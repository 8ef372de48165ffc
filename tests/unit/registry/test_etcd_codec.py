"""etcd's v3 JSON gateway as the etcd backend writes and reads it (pure: no sockets).

The shapes follow what etcd 3.4 sends: base64 keys and values, 64-bit numbers as strings,
PUT watch events without a "type" field, DELETE events with "type": "DELETE".
"""

from __future__ import annotations

import base64

import pytest

from registry.backend import Compare, Delete, KeyValue, Put, WatchEvent
from registry.errors import ValidationError
from registry.etcd import (
    batches_after,
    decode_events,
    decode_kv,
    encode_txn,
    error_of,
    key_range,
    normalize_endpoint,
    prefix_range_end,
)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("prefix", "end"),
    [(b"/isthmus/", b"/isthmus0"), (b"a\xff", b"b"), (b"\xff\xff", b"\0"), (b"", b"\0")],
)
def test_prefix_range_end_matches_etcd_clientv3(prefix, end):
    assert prefix_range_end(prefix) == end


def test_empty_prefix_ranges_over_the_whole_keyspace():
    assert key_range("") == {"key": b64("\0"), "range_end": b64("\0")}


def test_txn_puts_deletes_and_compares_are_encoded_as_the_gateway_expects():
    body = encode_txn(
        [
            Put("/isthmus/a", b"1", lease=7587),
            Put("/isthmus/b", b""),
            Delete("/isthmus/c"),
            Delete("/isthmus/d/", prefix=True),
        ],
        [Compare("/isthmus/a", 0), Compare("/isthmus/b", 12)],
    )
    assert body["compare"] == [
        {"key": b64("/isthmus/a"), "target": "MOD", "result": "EQUAL", "mod_revision": "0"},
        {"key": b64("/isthmus/b"), "target": "MOD", "result": "EQUAL", "mod_revision": "12"},
    ]
    assert body["success"] == [
        {"request_put": {"key": b64("/isthmus/a"), "value": b64("1"), "lease": "7587"}},
        {"request_put": {"key": b64("/isthmus/b"), "value": ""}},
        {"request_delete_range": {"key": b64("/isthmus/c")}},
        {"request_delete_range": {"key": b64("/isthmus/d/"), "range_end": b64("/isthmus/d0")}},
    ]
    assert body["failure"] == []


def test_range_kv_with_omitted_defaults_decodes_to_empty_value_and_no_lease():
    kv = decode_kv({"key": b64("/isthmus/b"), "create_revision": "3", "mod_revision": "3", "version": "1"})
    assert kv == KeyValue("/isthmus/b", b"", 3, 0)


def test_watch_put_has_no_type_and_delete_has_one():
    result = {
        "header": {"revision": "9"},
        "events": [
            {"kv": {"key": b64("/p/a"), "value": b64("x"), "mod_revision": "8", "lease": "42"}},
            {"type": "DELETE", "kv": {"key": b64("/p/b"), "mod_revision": "9"}},
        ],
    }
    assert decode_events(result) == [WatchEvent("put", "/p/a", b"x", 8), WatchEvent("delete", "/p/b", b"", 9)]


def test_batches_group_by_revision_and_drop_what_was_already_delivered():
    events = [
        WatchEvent("put", "/p/a", b"", 4),
        WatchEvent("put", "/p/b", b"", 5),
        WatchEvent("put", "/p/c", b"", 5),
        WatchEvent("delete", "/p/a", b"", 6),
    ]
    batches = batches_after(events, last_revision=4)
    assert [(b.revision, [e.key for e in b.events]) for b in batches] == [
        (5, ["/p/b", "/p/c"]),
        (6, ["/p/a"]),
    ]
    assert batches_after(events, last_revision=6) == []


@pytest.mark.parametrize("endpoint", ["127.0.0.1:2379", "http://127.0.0.1:2379/"])
def test_endpoints_are_normalized_to_urls(endpoint):
    assert normalize_endpoint(endpoint) == "http://127.0.0.1:2379"


@pytest.mark.parametrize("endpoint", ["", "127.0.0.1", "127.0.0.1:99999", "ftp://h:1"])
def test_bad_endpoint_is_a_validation_error_naming_it(endpoint):
    with pytest.raises(ValidationError, match="etcd endpoint"):
        normalize_endpoint(endpoint)


def test_gateway_error_body_gives_code_and_message():
    body = {
        "error": "etcdserver: requested lease not found",
        "message": "etcdserver: requested lease not found",
        "code": 5,
    }
    assert error_of(body) == (5, "etcdserver: requested lease not found")
