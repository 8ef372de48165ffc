"""A tiny trio loop over the pure logic on trio's MockClock: virtual failover times are exact.

The shell does what the gateway's I/O does: `trio.current_time()` for `now`, `trio.move_on_at()`
for the per-try deadline, `trio.sleep()` standing in for the network. A blackholed endpoint is a
`sleep_forever()` that the deadline cancels. With `autojump_clock` the 3 virtual seconds run in
milliseconds of real time, and the ejection lands on the exact instant the arithmetic predicts.
"""

from __future__ import annotations

import random

import trio

from gateway.lb.outlier import EndpointEjected, Outcome
from gateway.lb.testing import BLACKHOLE, CALLER_CLUSTER, CALLER_LOCALITY, REFUSE, FakeFleet, demo_balancer

RATE_PER_S = 200


async def run_load(balancer, fleet, seconds: float, tries: list, events: list) -> None:
    rng = random.Random(1)

    async def one_request() -> None:
        plan = balancer.begin(trio.current_time(), "GET")
        try:
            while True:
                start = trio.current_time()
                endpoint = plan.pick(start, rng)
                key = balancer.key_of(endpoint.id)
                behaviour = fleet.at(key, start)
                outcome = Outcome.TIMEOUT
                with trio.move_on_at(plan.try_deadline(start)):
                    if behaviour.mode == BLACKHOLE:
                        await trio.sleep_forever()
                    elif behaviour.mode == REFUSE:
                        await trio.sleep(0.001)
                        outcome = Outcome.CONNECT_FAILURE
                    else:
                        await trio.sleep(behaviour.latency_s)
                        outcome = Outcome.SUCCESS
                now = trio.current_time()
                tries.append((start, key, outcome))
                decision = plan.finish_try(outcome, now)
                for event in balancer.drain_events():
                    events.append((now, event))
                if not decision.retry:
                    if outcome is not Outcome.SUCCESS:
                        events.append((now, ("request failed", decision.reason)))
                    return
        finally:
            plan.close(trio.current_time())

    async with trio.open_nursery() as nursery:
        for i in range(int(seconds * RATE_PER_S)):
            await trio.sleep_until(i / RATE_PER_S)
            nursery.start_soon(one_request)


async def test_blackhole_ejection_is_exact_on_mockclock(autojump_clock):
    balancer = demo_balancer(per_zone=1)
    (dead,) = [
        e.id for e in balancer._endpoints if e.cluster == CALLER_CLUSTER and e.locality == CALLER_LOCALITY
    ]
    fleet = FakeFleet()
    fleet.set(dead, 1.0, BLACKHOLE)
    tries: list = []
    events: list = []

    await run_load(balancer, fleet, 3.0, tries, events)

    ejections = [(t, e) for t, e in events if isinstance(e, EndpointEjected)]
    assert len(ejections) == 1
    observed_at, event = ejections[0]
    # Third try into the blackhole started at 202/200 s and hit its 1 s per-try timeout: exactly then.
    assert observed_at == event.at == 202 / RATE_PER_S + 1.0
    assert event.returns_at == event.at + 5.0
    assert all(key != dead for start, key, _ in tries if start > event.at)
    assert trio.current_time() >= 3.0
    # Every timed-out try was retried in another locality: no request failed.
    into_blackhole = [(start, o) for start, k, o in tries if k == dead and start >= 1.0]
    # 1.000, 1.005, ... 2.005, and perhaps the arrival at the very instant of the ejection.
    assert len(into_blackhole) in (202, 203)
    assert all(o is Outcome.TIMEOUT for _, o in into_blackhole)
    assert [e for _, e in events if isinstance(e, tuple)] == []
