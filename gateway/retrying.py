"""Retries in the gateway's attempt loop: replayable request bodies, what a try's end means, and a
request plan for pickers that are not `gateway.lb` balancers.

Owns:
- `ReplayBody`: the request body of a request that may be tried more than once. Every chunk taken
  from the downstream is also kept in memory until `MAX_REPLAY_BYTES` (64 KiB) have passed; a retry
  reads a fresh `view()` that replays the kept chunks and then continues from the downstream. A
  body larger than that is streamed once and never retried once any of it has gone upstream:
  holding big uploads in memory for a retry that rarely comes would let a few clients exhaust a
  gateway.
- `try_outcome(exc)`: how a try that raised ended (`gateway.lb.outlier.Outcome` values).
- `response_retriable(...)`: which response heads are worth trying elsewhere: 503 from anyone, and
  502/503/504 from a peer gateway that says why (`x-isthmus-reason`), i.e. a failure of the path,
  not an answer of the application.
- `PickerPlan`: `RequestPlan`'s interface over a plain `gateway.picker.Picker` (round-robin), so
  the loop is the same whatever the routing table was built with.

Decisions are `gateway.lb`'s (`RequestPlan.finish_try`); this module adapts the I/O to them.
Imports trio types only for exception classification; never `federation`.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from typing import Any

import h11
import trio

from gateway.errors import GatewayError, UpstreamConnectError, UpstreamReset, UpstreamTimeout
from gateway.h2conn import StreamReset
from gateway.lb.outlier import Outcome
from gateway.lb.policy import RetryPolicy, TimeoutPolicy
from gateway.lb.retry import RetryDecision, RetryState
from registry.model import Endpoint

# A request body up to this size stays replayable after it has been streamed upstream.
MAX_REPLAY_BYTES = 64 * 1024
# Conditions that make sense on the east-west listener: the caller's gateway owns failover
# ("failover happens at the caller, once"), so the receiving gateway only moves a request to
# another local endpoint when nothing of it was sent.
EASTWEST_RETRY_ON = ("connect-failure",)


class ResponseHeld(Exception):
    """A try's response head was retriable and a retry was decided: its body is discarded."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


class ReplayBody:
    """A downstream body that can be read again from the start while it is small (see module doc)."""

    def __init__(self, source: Any, max_bytes: int = MAX_REPLAY_BYTES) -> None:
        self.source = source
        self.max_bytes = max_bytes
        self.chunks: list[bytes] = []
        self.size = 0
        self.overflowed = False
        self.source_done = source.end_stream
        self.views = 0

    @property
    def replayable(self) -> bool:
        return not self.overflowed

    def view(self) -> ReplayView:
        self.views += 1
        return ReplayView(self)

    async def _take(self) -> bytes | None:
        if self.source_done:
            return None
        chunk = await self.source.receive()
        if chunk is None:
            self.source_done = True
            return None
        if not self.overflowed:
            self.size += len(chunk)
            if self.size > self.max_bytes:
                self.overflowed = True
                self.chunks.clear()
            else:
                self.chunks.append(chunk)
        return chunk


class ReplayView:
    """One reading of a `ReplayBody` (the `gateway.proxy.Body` protocol)."""

    def __init__(self, body: ReplayBody) -> None:
        self.body = body
        self.index = 0
        self.end_stream = body.source.end_stream

    @property
    def finished(self) -> bool:
        body = self.body
        return (body.source_done or body.source.finished) and (body.overflowed or self.index >= len(body.chunks))

    @property
    def trailers(self) -> list[tuple[bytes, bytes]] | None:
        return self.body.source.trailers

    async def receive(self) -> bytes | None:
        body = self.body
        if not body.overflowed and self.index < len(body.chunks):
            chunk = body.chunks[self.index]
            self.index += 1
            return chunk
        chunk = await body._take()
        if chunk is not None and not body.overflowed:
            self.index += 1
        return chunk


def try_outcome(exc: BaseException) -> Outcome:
    """How a try that raised `exc` ended, for the outlier detector and the retry decision."""
    if isinstance(exc, UpstreamConnectError):
        return Outcome.CONNECT_FAILURE
    if isinstance(exc, UpstreamTimeout):
        return Outcome.TIMEOUT
    if isinstance(exc, (UpstreamReset, StreamReset, h11.ProtocolError, trio.BrokenResourceError,
                        trio.ClosedResourceError)):
        return Outcome.RESET
    if isinstance(exc, GatewayError):
        # ClusterUnknown and the like: the path to that host does not exist, nothing was sent.
        return Outcome.CONNECT_FAILURE
    return Outcome.RESET


def response_retriable(status: int, reason: str, *, via_gateway: bool, retry_on: Collection[str]) -> bool:
    """Whether a response head with `status` is a failure of the path that another host may not have."""
    if status == 503 and ("503" in retry_on or "gateway-error" in retry_on):
        return True
    if status in (502, 503, 504) and via_gateway and reason and "gateway-error" in retry_on:
        return True
    return "5xx" in retry_on and 500 <= status <= 599 and via_gateway and bool(reason)


class PickerPlan:
    """`gateway.lb.balancer.RequestPlan`'s interface over a bare picker (no budget, no breaker)."""

    def __init__(self, picker: Any, method: str, now: float, retry: RetryPolicy | None,
                 timeout: TimeoutPolicy | None) -> None:
        self.picker = picker
        self.state = RetryState(method, now, retry, timeout)
        self.tried: list[str] = []
        self.current: Endpoint | None = None

    def pick(self, now: float, rng: random.Random) -> Endpoint:
        endpoint = self.picker.pick(now, rng, self.tried)
        self.tried.append(endpoint.id)
        self.current = endpoint
        self.state.tries += 1
        return endpoint

    def try_deadline(self, now: float) -> float | None:
        return self.state.try_deadline(now)

    def finish_try(self, outcome: Outcome | str | int, now: float, *, status: int | None = None) -> RetryDecision:
        if self.current is not None:
            self.picker.report(self.current.id, str(Outcome.coerce(outcome)), now)
            self.current = None
        return self.state.decide(outcome, now, status=status)

    def close(self, now: float) -> None:
        if self.current is not None:
            self.picker.report(self.current.id, "cancelled", now)
            self.current = None


def open_plan(picker: Any, now: float, method: str, *, retry: RetryPolicy | None,
              timeout: TimeoutPolicy | None, eastwest: bool) -> Any:
    """A request plan from the picker: `Balancer.begin` (raises `Overloaded`), else a `PickerPlan`."""
    policy = getattr(picker, "policy", None)
    if retry is None and policy is not None:
        retry = policy.retry
    if timeout is None and policy is not None:
        timeout = policy.timeout
    if eastwest:
        base = retry or RetryPolicy()
        retry = RetryPolicy(attempts=base.attempts, retry_on=EASTWEST_RETRY_ON,
                            prefer_other_locality=base.prefer_other_locality,
                            idempotent_methods=base.idempotent_methods, budget_percent=base.budget_percent,
                            min_retry_concurrency=base.min_retry_concurrency)
    begin = getattr(picker, "begin", None)
    if begin is not None:
        return begin(now, method, retry=retry, timeout=timeout)
    return PickerPlan(picker, method, now, retry, timeout)
