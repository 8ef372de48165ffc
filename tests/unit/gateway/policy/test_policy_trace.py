"""W3C trace context: traceparent round trips, invalid values are refused (and a new trace started),
tracestate passes through when valid, and each hop gets a child with the same trace id."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.policy.trace import (
    TraceContext,
    child_of,
    continue_or_start,
    format_traceparent,
    new_trace,
    parse_traceparent,
    parse_tracestate,
)

SPEC_EXAMPLE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

trace_ids = st.integers(1, 2**128 - 1).map(lambda v: f"{v:032x}")
parent_ids = st.integers(1, 2**64 - 1).map(lambda v: f"{v:016x}")
flags = st.integers(0, 255)


@given(trace_ids, parent_ids, flags)
def test_traceparent_format_and_parse_round_trip(trace_id, parent_id, flag):
    context = TraceContext(trace_id, parent_id, flag)
    text = format_traceparent(context)
    assert len(text) == 55
    assert parse_traceparent(text) == context
    assert parse_traceparent(text.encode()) == context


def test_the_spec_example_parses():
    context = parse_traceparent(SPEC_EXAMPLE)
    assert context == TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1)
    assert context.sampled
    assert context.traceparent == SPEC_EXAMPLE


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        SPEC_EXAMPLE.upper(),  # upper-case hex
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
        SPEC_EXAMPLE + "-extra",  # version 00 is exactly 55 characters
        SPEC_EXAMPLE[:-1],
        SPEC_EXAMPLE.replace("-", "_"),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        "00-4bf92f3577b34da6a3ce929d0e0e473\n-00f067aa0ba902b7-01",
        "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",  # a future version needs '-' after 55
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" + b"\xff",
    ],
)
def test_invalid_traceparents_are_refused(value):
    assert parse_traceparent(value) is None


def test_a_future_version_is_read_by_its_first_fields_and_forwarded_as_version_00():
    context = parse_traceparent(
        "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds"
    )
    assert context is not None
    assert format_traceparent(context) == SPEC_EXAMPLE


@given(st.text(max_size=80))
def test_any_text_either_parses_to_a_valid_context_or_is_refused(text):
    context = parse_traceparent(text)
    if context is not None:
        assert text[3:35] == context.trace_id and text[36:52] == context.parent_id
        assert set(context.trace_id + context.parent_id) <= set("0123456789abcdef")


@given(st.integers(0, 54), st.sampled_from(list("AFGZ-_ x")))
def test_corrupting_one_character_of_an_id_or_flags_is_refused(position, char):
    if position in (2, 35, 52) or SPEC_EXAMPLE[position] == char:
        return
    corrupted = SPEC_EXAMPLE[:position] + char + SPEC_EXAMPLE[position + 1 :]
    assert parse_traceparent(corrupted) is None


def test_valid_tracestate_passes_through_and_invalid_is_dropped():
    assert (
        parse_tracestate("rojo=00f067aa0ba902b7, congo=t61rcWkgMzE")
        == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    )
    assert parse_tracestate("fw529a3039@dt=value,,") == "fw529a3039@dt=value"
    assert parse_tracestate(None) == ""
    assert parse_tracestate("Rojo=1") is None  # keys are lower-case
    assert parse_tracestate("rojo=1,rojo=2") is None  # duplicate key
    assert parse_tracestate("rojo=a=b") is None  # '=' not allowed in a value
    assert parse_tracestate("rojo=a\tb") is None  # no control characters in a value
    assert (
        parse_tracestate(" rojo=spaced , congo=x ") == "rojo=spaced,congo=x"
    )  # optional whitespace around members
    assert parse_tracestate(",".join(f"k{i}=v" for i in range(33))) is None  # more than 32 members
    assert parse_tracestate(",".join(f"k{i}=v" for i in range(32))) is not None


def test_long_tracestate_is_truncated_dropping_long_members_first():
    long_member = "big=" + "x" * 200
    members = [f"k{i:02d}=" + "v" * 40 for i in range(12)]
    state = parse_tracestate(",".join([members[0], long_member, *members[1:]]))
    assert long_member not in state
    assert len(state) <= 512
    assert state.startswith(members[0] + "," + members[1])


def test_a_request_without_context_starts_a_new_trace():
    context, created = continue_or_start(None, "rojo=1", random.Random(3))
    assert created
    assert parse_traceparent(context.traceparent) == TraceContext(context.trace_id, context.parent_id, 0)
    assert context.tracestate == ""  # tracestate without a valid traceparent is not propagated


def test_an_invalid_traceparent_starts_a_new_trace_and_drops_its_tracestate():
    context, created = continue_or_start("00-zz", "rojo=1", random.Random(3), sampled=True)
    assert created and context.sampled and context.tracestate == ""


def test_each_hop_continues_the_trace_with_a_new_parent_id():
    rng = random.Random(11)
    incoming, created = continue_or_start(SPEC_EXAMPLE, "rojo=00f067aa0ba902b7", rng)
    assert not created
    hop1 = child_of(incoming, rng)
    hop2 = child_of(hop1, rng)
    assert hop1.trace_id == hop2.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert len({incoming.parent_id, hop1.parent_id, hop2.parent_id}) == 3
    assert hop2.flags == 1 and hop2.tracestate == "rojo=00f067aa0ba902b7"


@given(st.integers(0, 2**32))
def test_new_ids_are_valid_whatever_the_seed(seed):
    context = new_trace(random.Random(seed))
    assert parse_traceparent(format_traceparent(context)) == context


def test_a_zero_draw_is_redrawn():
    class ZeroFirst(random.Random):
        calls = 0

        def getrandbits(self, k):
            self.calls += 1
            return 0 if self.calls == 1 else super().getrandbits(k)

    context = new_trace(ZeroFirst(1))
    assert context.trace_id.strip("0")
