"""The circuit breaker's transitions, the retry budget and the retry decision."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import Overloaded
from gateway.lb.circuit import CircuitBreaker, CircuitClosed, CircuitOpened, Resource
from gateway.lb.outlier import Outcome
from gateway.lb.policy import CircuitBreakerPolicy, RetryPolicy, TimeoutPolicy
from gateway.lb.retry import RetryBudget, RetryState, retriable


def breaker(limit: int = 2) -> CircuitBreaker:
    return CircuitBreaker(
        "echo.demo",
        CircuitBreakerPolicy(max_connections=limit, max_pending_requests=limit, max_requests=limit),
    )


def test_circuit_opens_at_the_limit_rejects_and_closes_on_release():
    cb = breaker(2)
    assert cb.try_acquire(Resource.REQUESTS, 1.0)
    assert not cb.is_open(Resource.REQUESTS)
    assert cb.try_acquire(Resource.REQUESTS, 1.1)  # reaches the limit: CLOSED -> OPEN
    assert cb.is_open(Resource.REQUESTS)
    assert not cb.try_acquire(Resource.REQUESTS, 1.2)
    assert cb.rejections[Resource.REQUESTS] == 1
    cb.release(Resource.REQUESTS, 1.3)  # OPEN -> CLOSED
    assert not cb.is_open(Resource.REQUESTS)
    assert cb.drain_events() == [
        CircuitOpened("echo.demo", Resource.REQUESTS, 1.1),
        CircuitClosed("echo.demo", Resource.REQUESTS, 1.3),
    ]
    assert cb.drain_events() == []


def test_resources_are_independent_and_release_never_goes_negative():
    cb = breaker(1)
    cb.acquire(Resource.CONNECTIONS, 0.0)
    assert cb.try_acquire(Resource.PENDING, 0.0)
    cb.release(Resource.REQUESTS, 0.0)
    assert cb.counts[Resource.REQUESTS] == 0


def test_open_circuit_raises_overloaded_with_a_one_line_reason():
    cb = breaker(1)
    cb.acquire(Resource.REQUESTS, 0.0)
    with pytest.raises(Overloaded) as info:
        cb.acquire(Resource.REQUESTS, 0.0)
    assert str(info.value) == "echo.demo: circuit open: requests at limit 1"
    assert (info.value.status, info.value.reason) == (503, "overflow")


@given(st.lists(st.booleans(), max_size=100))
def test_circuit_state_is_a_function_of_the_count(ops):
    cb = breaker(3)
    for acquire in ops:
        if acquire:
            cb.try_acquire(Resource.REQUESTS, 0.0)
        else:
            cb.release(Resource.REQUESTS, 0.0)
        assert 0 <= cb.counts[Resource.REQUESTS] <= 3
        assert cb.is_open(Resource.REQUESTS) == (cb.counts[Resource.REQUESTS] == 3)
    kinds = [type(e) for e in cb.drain_events()]
    assert all(a is not b for a, b in itertools.pairwise(kinds))  # opened and closed alternate


def test_retry_budget_is_20_percent_with_a_floor_of_3():
    budget = RetryBudget()
    budget.active_requests = 5
    assert budget.limit() == 3
    budget.active_requests = 100
    assert budget.limit() == 20
    budget.active_retries = 19
    assert budget.allows_retry()
    budget.active_retries = 20
    assert not budget.allows_retry()


@pytest.mark.parametrize(
    ("outcome", "status", "retry_on", "expected"),
    [
        (Outcome.CONNECT_FAILURE, None, ("connect-failure",), True),
        (Outcome.RESET, None, ("connect-failure",), False),
        (Outcome.RESET, None, ("reset",), True),
        (Outcome.TIMEOUT, None, ("reset",), True),
        (Outcome.GATEWAY_ERROR, 503, ("503",), True),
        (Outcome.GATEWAY_ERROR, 502, ("503",), False),
        (Outcome.GATEWAY_ERROR, 504, ("gateway-error",), True),
        (Outcome.HTTP_5XX, 500, ("gateway-error",), False),
        (Outcome.HTTP_5XX, 500, ("5xx",), True),
        (Outcome.SUCCESS, 200, ("5xx",), False),
        (Outcome.CANCELLED, None, ("5xx", "reset"), False),
    ],
)
def test_retry_on_conditions(outcome, status, retry_on, expected):
    assert retriable(outcome, status, retry_on) is expected


def test_retries_stop_after_the_attempts():
    state = RetryState("GET", 0.0, RetryPolicy(attempts=2))
    state.tries = 1
    assert state.decide(Outcome.CONNECT_FAILURE, 0.1).retry
    state.tries = 2
    assert state.decide(Outcome.CONNECT_FAILURE, 0.2).reason == "attempts-exhausted"


def test_non_idempotent_requests_are_retried_only_when_nothing_was_sent():
    state = RetryState("POST", 0.0)
    state.tries = 1
    assert state.decide(Outcome.RESET, 0.1).reason == "not-idempotent"
    assert state.decide(Outcome.CONNECT_FAILURE, 0.1).retry
    assert RetryState("post", 0.0, RetryPolicy(retry_non_idempotent=True)).decide(Outcome.RESET, 0.1).retry


def test_an_int_outcome_is_an_http_status():
    state = RetryState("GET", 0.0, RetryPolicy(retry_on=("503",)))
    state.tries = 1
    assert state.decide(503, 0.1).retry
    assert not state.decide(502, 0.1).retry


def test_retries_respect_the_request_deadline_and_the_budget():
    state = RetryState("GET", 10.0, timeout=TimeoutPolicy(request_timeout_s=2.0))
    state.tries = 1
    assert state.decide(Outcome.TIMEOUT, 12.0).reason == "deadline"
    budget = RetryBudget(min_retry_concurrency=0)
    assert state.decide(Outcome.TIMEOUT, 11.0, budget=budget).reason == "budget-exhausted"
    assert budget.exhausted == 1


def test_try_deadline_is_the_earlier_of_per_try_and_overall():
    state = RetryState("GET", 10.0, timeout=TimeoutPolicy(per_try_timeout_s=1.0, request_timeout_s=2.5))
    assert state.try_deadline(10.0) == 11.0
    assert state.try_deadline(12.0) == 12.5
    assert (
        RetryState(
            "GET", 0.0, timeout=TimeoutPolicy(per_try_timeout_s=None, request_timeout_s=None)
        ).try_deadline(5.0)
        is None
    )
