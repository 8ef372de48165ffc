"""The retry budget of one upstream cluster, and the retry state of one request.

Retry budget (Envoy's `retry_budget` circuit breaker, envoyproxy.io api v3
`config.cluster.v3.CircuitBreakers.Thresholds.RetryBudget`): at most `budget_percent` (20 %) of
the active requests may be retries, but `min_retry_concurrency` retries (Envoy: 3, Isthmus's
default policy: 32, see `RetryPolicy`) are always allowed,
so a quiet service can still retry while a saturated one cannot multiply its own overload.

Retry decision (Envoy's `retry_on` conditions, x-envoy-retry-on in the router filter docs):

    condition        retries when the try ended with
    connect-failure  CONNECT_FAILURE
    reset            RESET, TIMEOUT (a per-try timeout resets the upstream stream)
    503              a 503 response
    gateway-error    a 502/503/504 response, CONNECT_FAILURE, RESET, TIMEOUT
    5xx              any 5xx response, CONNECT_FAILURE, RESET, TIMEOUT

A non-idempotent method (RFC 9110 section 9.2.2) is retried only after a connect failure (the
request never left) unless the policy says `retry_non_idempotent`. The overall request deadline
bounds every try: a try never outlives `request_timeout_s`. Which host a retry goes to is the
balancer's business (another host, and another locality when one exists).

Pure: no trio, no clock reads.
"""

from __future__ import annotations

import attrs

from gateway.lb.outlier import Outcome
from gateway.lb.policy import RetryPolicy, TimeoutPolicy


class RetryBudget:
    """Active requests and active retries of one upstream cluster."""

    def __init__(self, budget_percent: float = 20.0, min_retry_concurrency: int = 3) -> None:
        self.budget_percent = budget_percent
        self.min_retry_concurrency = min_retry_concurrency
        self.active_requests = 0
        self.active_retries = 0
        self.exhausted = 0  # retries refused, for metrics

    def limit(self) -> int:
        return max(self.min_retry_concurrency, int(self.budget_percent * self.active_requests / 100))

    def allows_retry(self) -> bool:
        return self.active_retries < self.limit()


def retriable(outcome: Outcome, status: int | None, retry_on: tuple[str, ...]) -> bool:
    """Whether `retry_on` covers a try that ended with `outcome` (and HTTP `status`, if any)."""
    if outcome in (Outcome.SUCCESS, Outcome.CANCELLED):
        return False
    for condition in retry_on:
        if condition == "connect-failure" and outcome is Outcome.CONNECT_FAILURE:
            return True
        if condition == "reset" and outcome in (Outcome.RESET, Outcome.TIMEOUT):
            return True
        if condition == "503" and outcome is Outcome.GATEWAY_ERROR and status in (503, None):
            return True
        if condition == "gateway-error" and outcome.is_gateway_error:
            return True
        if condition == "5xx" and outcome.is_failure:
            return True
    return False


@attrs.frozen
class RetryDecision:
    retry: bool
    reason: str  # why not, or "retry"


class RetryState:
    """One request's tries: deadlines, and whether the next failure may be retried."""

    def __init__(
        self, method: str, now: float, retry: RetryPolicy | None = None, timeout: TimeoutPolicy | None = None
    ):
        self.method = method.upper()
        self.policy = retry or RetryPolicy()
        self.timeout = timeout or TimeoutPolicy()
        self.started_at = now
        self.deadline = now + self.timeout.request_timeout_s if self.timeout.request_timeout_s else None
        self.tries = 0

    @property
    def idempotent(self) -> bool:
        return self.method in self.policy.idempotent_methods

    def try_deadline(self, now: float) -> float | None:
        """When the try starting at `now` must have its response headers."""
        per_try = now + self.timeout.per_try_timeout_s if self.timeout.per_try_timeout_s else None
        candidates = [t for t in (per_try, self.deadline) if t is not None]
        return min(candidates) if candidates else None

    def decide(
        self,
        outcome: Outcome | str | int,
        now: float,
        *,
        status: int | None = None,
        budget: RetryBudget | None = None,
    ) -> RetryDecision:
        """After try number `self.tries` ended with `outcome`: retry or not, and why."""
        if status is None and isinstance(outcome, int) and not isinstance(outcome, bool):
            status = outcome
        outcome = Outcome.coerce(outcome)
        if not retriable(outcome, status, self.policy.retry_on):
            return RetryDecision(False, "not-retriable")
        if self.tries >= self.policy.attempts:
            return RetryDecision(False, "attempts-exhausted")
        if not (self.idempotent or self.policy.retry_non_idempotent or outcome is Outcome.CONNECT_FAILURE):
            return RetryDecision(False, "not-idempotent")
        if self.deadline is not None and now >= self.deadline:
            return RetryDecision(False, "deadline")
        if budget is not None and not budget.allows_retry():
            budget.exhausted += 1
            return RetryDecision(False, "budget-exhausted")
        return RetryDecision(True, "retry")
