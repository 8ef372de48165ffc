"""Weighted power-of-two-choices least-request."""

from __future__ import annotations

import random
from collections import Counter

import attrs
from hypothesis import given
from hypothesis import strategies as st

from gateway.lb.p2c import choose


@attrs.define
class H:
    name: str
    weight: float = 1.0
    active: int = 0


def pick(hosts, rng):
    return choose(hosts, rng, weight=lambda h: h.weight, active=lambda h: h.active)


def test_one_host_is_always_chosen():
    only = H("a")
    assert pick([only], random.Random(1)) is only


def test_the_less_loaded_of_two_wins():
    a, b = H("a", active=5), H("b", active=1)
    rng = random.Random(3)
    assert all(pick([a, b], rng) is b for _ in range(100))


def test_load_is_active_over_weight():
    heavy, light = H("heavy", weight=3, active=5), H("light", weight=1, active=2)
    assert all(pick([heavy, light], random.Random(i)) is heavy for i in range(50))  # 5/3 < 2/1


def test_idle_traffic_splits_by_weight():
    hosts = [H("a", weight=1), H("b", weight=3)]
    rng = random.Random(11)
    counts = Counter(pick(hosts, rng).name for _ in range(20_000))
    assert abs(counts["b"] / 20_000 - 0.75) < 0.02


def test_least_request_keeps_in_flight_balanced():
    hosts = [H(str(i)) for i in range(6)]
    rng = random.Random(5)
    for _ in range(600):
        pick(hosts, rng).active += 1
    actives = [h.active for h in hosts]
    assert max(actives) - min(actives) <= 3


def test_zero_weights_fall_back_to_unweighted_choices():
    hosts = [H("a", weight=0, active=3), H("b", weight=0, active=0)]
    assert pick(hosts, random.Random(2)).name == "b"


@given(
    st.lists(st.tuples(st.integers(1, 10), st.integers(0, 20)), min_size=1, max_size=8), st.integers(0, 2**32)
)
def test_never_picks_the_busier_of_the_two_drawn(specs, seed):
    hosts = [H(str(i), w, a) for i, (w, a) in enumerate(specs)]
    chosen = pick(hosts, random.Random(seed))
    assert chosen in hosts
    # The most loaded host (per weight) can win only if it ties with another, or stands alone.
    loads = sorted(h.active / h.weight for h in hosts)
    if len(hosts) > 1 and loads[-1] > loads[-2]:
        assert chosen.active / chosen.weight < loads[-1]
