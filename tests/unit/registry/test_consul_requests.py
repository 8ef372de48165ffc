"""What the consul backend sends and how it reads Consul's answers (pure: no sockets).

Request shapes and sample answers follow Consul's HTTP API documentation for `/v1/txn`,
`/v1/kv`, `/v1/session` and blocking queries.
"""

from __future__ import annotations

import base64
import uuid

import pytest

from registry.backend import Compare, Delete, KeyValue, Put, WatchEvent
from registry.consul import (
    MAX_TXN_OPS,
    decode_entries,
    diff_events,
    encode_txn,
    from_consul_key,
    group_batches,
    lease_to_session,
    session_create_body,
    session_to_lease,
    to_consul_key,
    txn_failure,
    txn_revision,
)
from registry.errors import Conflict, LeaseExpired, RegistryError, ValidationError

SESSION = "adf4238a-882b-9ddc-4a9d-5b6758e4159e"  # the session id of Consul's documentation samples


def test_keys_lose_their_leading_slash_in_consul_and_get_it_back():
    assert to_consul_key("/isthmus/east-1/services/echo.demo") == "isthmus/east-1/services/echo.demo"
    assert from_consul_key("isthmus/east-1/services/echo.demo") == "/isthmus/east-1/services/echo.demo"


def test_a_key_without_leading_slash_is_refused_naming_it():
    with pytest.raises(ValidationError, match="'isthmus/x'"):
        to_consul_key("isthmus/x")


def test_lease_ids_are_session_uuids_as_integers():
    lease = session_to_lease(SESSION)
    assert lease == uuid.UUID(SESSION).int
    assert lease_to_session(lease) == SESSION
    assert session_to_lease(None) == 0 and session_to_lease("") == 0


@pytest.mark.parametrize(("ttl_s", "ttl"), [(1, "10s"), (10, "10s"), (30.5, "31s"), (10**6, "86400s")])
def test_session_ttl_is_kept_within_consuls_documented_range(ttl_s, ttl):
    assert session_create_body(ttl_s) == {
        "Name": "isthmus",
        "TTL": ttl,
        "Behavior": "delete",
        "LockDelay": "0s",
    }


def test_txn_uses_the_documented_verbs_compares_first():
    lease = session_to_lease(SESSION)
    body = encode_txn(
        [Put("/i/a", b"1"), Put("/i/b", b"\xff", lease=lease), Delete("/i/c"), Delete("/i/d/", prefix=True)],
        [Compare("/i/a", 0), Compare("/i/b", 120)],
    )
    assert body == [
        {"KV": {"Verb": "check-not-exists", "Key": "i/a"}},
        {"KV": {"Verb": "check-index", "Key": "i/b", "Index": 120}},
        {"KV": {"Verb": "set", "Key": "i/a", "Value": base64.b64encode(b"1").decode()}},
        {
            "KV": {
                "Verb": "lock",
                "Key": "i/b",
                "Value": base64.b64encode(b"\xff").decode(),
                "Session": SESSION,
            }
        },
        {"KV": {"Verb": "delete", "Key": "i/c"}},
        {"KV": {"Verb": "delete-tree", "Key": "i/d/"}},
    ]


def test_txn_over_the_documented_limit_is_refused_before_sending():
    with pytest.raises(ValidationError, match=f"at most {MAX_TXN_OPS}"):
        encode_txn([Put(f"/i/{n}", b"") for n in range(MAX_TXN_OPS + 1)])


def test_kv_list_sample_decodes_with_value_index_and_lease():
    sample = [
        {
            "CreateIndex": 100,
            "ModifyIndex": 200,
            "LockIndex": 200,
            "Key": "zip",
            "Flags": 0,
            "Value": "dGVzdA==",
            "Session": SESSION,
        },
        {"CreateIndex": 90, "ModifyIndex": 90, "LockIndex": 0, "Key": "abc", "Flags": 0, "Value": None},
    ]
    assert list(decode_entries(sample).values()) == [
        KeyValue("/abc", b"", 90, 0),
        KeyValue("/zip", b"test", 200, session_to_lease(SESSION)),
    ]
    assert decode_entries(None) == {}  # a 404: nothing under the prefix


def test_txn_revision_is_the_modify_index_of_the_writes():
    answer = {
        "Results": [
            {
                "KV": {
                    "LockIndex": 0,
                    "Key": "i/a",
                    "Flags": 0,
                    "Value": None,
                    "CreateIndex": 31,
                    "ModifyIndex": 33,
                }
            }
        ],
        "Errors": None,
    }
    assert txn_revision(answer) == 33
    assert txn_revision({"Results": None, "Errors": None}) == 0


def test_rolled_back_txn_at_a_compare_is_a_conflict():
    compare = [Compare("/i/a", 0)]
    error = txn_failure(
        {"Results": None, "Errors": [{"OpIndex": 0, "What": 'failed to check-not-exists key "i/a"'}]},
        [Put("/i/a", b"")],
        compare,
    )
    assert isinstance(error, Conflict) and "/i/a" in str(error)


def test_rolled_back_txn_at_a_lock_with_a_dead_session_is_an_expired_lease():
    lease = session_to_lease(SESSION)
    error = txn_failure(
        {"Errors": [{"OpIndex": 0, "What": f'invalid session "{SESSION}"'}]}, [Put("/i/a", b"", lease)], ()
    )
    assert isinstance(error, LeaseExpired)


def test_other_rolled_back_txn_names_the_key():
    error = txn_failure(
        {"Errors": [{"OpIndex": 1, "What": "key too large"}]}, [Put("/i/a", b""), Put("/i/b", b"")], ()
    )
    assert type(error) is RegistryError and "/i/b" in str(error)


def test_blocking_query_answers_diff_into_ordered_batches():
    old = {
        "/p/a": KeyValue("/p/a", b"1", 10),
        "/p/b": KeyValue("/p/b", b"2", 11),
        "/p/c": KeyValue("/p/c", b"3", 11),
    }
    new = {
        "/p/a": KeyValue("/p/a", b"1", 10),
        "/p/b": KeyValue("/p/b", b"22", 14),
        "/p/d": KeyValue("/p/d", b"4", 12),
        "/p/e": KeyValue("/p/e", b"5", 12),
    }
    events = diff_events(old, new, {"/p/c": 13}, default_delete_revision=14)
    assert events == [
        WatchEvent("put", "/p/d", b"4", 12),
        WatchEvent("put", "/p/e", b"5", 12),
        WatchEvent("delete", "/p/c", b"", 13),
        WatchEvent("put", "/p/b", b"22", 14),
    ]
    batches = group_batches(events, after_revision=11)
    assert [(b.revision, [e.key for e in b.events]) for b in batches] == [
        (12, ["/p/d", "/p/e"]),
        (13, ["/p/c"]),
        (14, ["/p/b"]),
    ]


def test_batches_never_go_back_to_a_revision_already_delivered():
    events = [WatchEvent("delete", "/p/x", b"", 5), WatchEvent("put", "/p/y", b"", 9)]
    assert [b.revision for b in group_batches(events, after_revision=7)] == [8, 9]
