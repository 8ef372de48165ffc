"""The attempt loop's helpers: replayable bodies, retriable response heads, plans over plain pickers,
and the gateway's source address."""

from __future__ import annotations

import random

import pytest

from gateway.config import GatewayConfig
from gateway.errors import ClusterUnknown, UpstreamConnectError, UpstreamReset, UpstreamTimeout
from gateway.lb.outlier import Outcome
from gateway.net import source_address_of
from gateway.picker import RoundRobinPicker
from gateway.retrying import ReplayBody, open_plan, response_retriable, try_outcome
from registry.model import Endpoint, Locality

ZONE = Locality("us-east", "us-east-1a")


class FakeBody:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.end_stream = not chunks
        self.trailers = None

    @property
    def finished(self) -> bool:
        return not self.chunks

    async def receive(self) -> bytes | None:
        return self.chunks.pop(0) if self.chunks else None


async def read_all(view) -> bytes:
    out = b""
    while (chunk := await view.receive()) is not None:
        out += chunk
    return out


async def test_a_small_body_is_replayed_from_the_start_after_a_partial_first_try():
    body = ReplayBody(FakeBody([b"ab", b"cd", b"ef"]))
    first = body.view()
    assert await first.receive() == b"ab"
    assert not first.finished
    second = body.view()
    assert await read_all(second) == b"abcdef"
    assert second.finished and body.replayable
    assert await read_all(body.view()) == b"abcdef"


async def test_a_body_over_the_limit_streams_once_and_is_not_replayable():
    body = ReplayBody(FakeBody([b"x" * 6, b"y" * 6]), max_bytes=10)
    assert await read_all(body.view()) == b"x" * 6 + b"y" * 6
    assert not body.replayable


@pytest.mark.parametrize(
    ("status", "reason", "via_gateway", "retried"),
    [
        (503, "", False, True),  # an endpoint saying it is unavailable
        (502, "", False, False),  # an application's own 502 is its answer
        (504, "", False, False),
        (502, "upstream-reset", True, True),  # a peer gateway's path failure
        (504, "upstream-timeout", True, True),
        (502, "", True, False),  # the remote application's 502 passed through
        (500, "", True, False),
        (200, "", True, False),
    ],
)
def test_which_response_heads_are_tried_elsewhere(status, reason, via_gateway, retried):
    retry_on = ("connect-failure", "reset", "503", "gateway-error")
    assert response_retriable(status, reason, via_gateway=via_gateway, retry_on=retry_on) is retried


def test_try_outcomes_follow_the_error_kind():
    assert try_outcome(UpstreamConnectError("x")) is Outcome.CONNECT_FAILURE
    assert try_outcome(UpstreamTimeout("x")) is Outcome.TIMEOUT
    assert try_outcome(UpstreamReset("x")) is Outcome.RESET
    assert try_outcome(ClusterUnknown("x")) is Outcome.CONNECT_FAILURE


def endpoints() -> list[Endpoint]:
    return [Endpoint("echo.demo", "east-1", "127.0.0.1", port, ZONE, id=f"e{port}") for port in (1, 2)]


def test_a_plan_over_a_round_robin_picker_retries_a_get_on_another_endpoint():
    plan = open_plan(RoundRobinPicker(endpoints(), cluster="east-1", locality=ZONE), 0.0, "GET",
                     retry=None, timeout=None, eastwest=False)
    rng = random.Random(1)
    first = plan.pick(0.0, rng)
    assert plan.finish_try("reset", 0.1).retry
    assert plan.pick(0.1, rng).id != first.id
    assert not plan.finish_try(200, 0.2).retry


def test_a_post_is_retried_only_after_a_connect_failure():
    plan = open_plan(RoundRobinPicker(endpoints(), cluster="east-1", locality=ZONE), 0.0, "POST",
                     retry=None, timeout=None, eastwest=False)
    rng = random.Random(1)
    plan.pick(0.0, rng)
    assert plan.finish_try("connect-failure", 0.0).retry
    plan.pick(0.0, rng)
    assert plan.finish_try("reset", 0.0).reason == "not-idempotent"


def test_the_east_west_listener_retries_connect_failures_only():
    plan = open_plan(RoundRobinPicker(endpoints(), cluster="east-1", locality=ZONE), 0.0, "GET",
                     retry=None, timeout=None, eastwest=True)
    plan.pick(0.0, random.Random(1))
    assert plan.finish_try("reset", 0.0).reason == "not-retriable"


def config(**kwargs) -> GatewayConfig:
    return GatewayConfig(cluster="east-2", locality=ZONE, contexts=object(), **kwargs)


def test_the_source_address_is_the_clusters_own_loopback_address():
    assert source_address_of(config(eastwest="127.0.2.1:15443")) == "127.0.2.1"
    assert source_address_of(config(eastwest="127.0.0.1:15443")) is None
    assert source_address_of(config(eastwest="0.0.0.0:15443")) is None
    assert source_address_of(config(eastwest="127.0.2.1:15443", source_address="127.0.9.9")) == "127.0.9.9"


def test_a_bad_source_address_is_one_line_naming_the_field():
    from gateway.errors import ConfigInvalid

    with pytest.raises(ConfigInvalid, match=r"^gateway.source_address: 'here' is not an IP address$"):
        config(source_address="here")
