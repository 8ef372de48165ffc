"""Locality priorities and Envoy's priority-load arithmetic, checked against Envoy's worked tables.

Tables: envoyproxy.io intro/arch_overview/upstream/load_balancing/priority ("Priority levels")
and .../panic_threshold ("Panic threshold"). Percentages of healthy hosts are realised with 100
hosts per level. Where a doc table rounds real-valued shares, the row carries the doc's figures
and the integer result of Envoy's `recalculatePerPriorityState`, which this module implements.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.lb.priority import (
    choose_priority,
    level_health,
    priority_load,
    priority_of,
    region_order,
)
from registry.model import Locality


def loads_for(*healthy_percents: int, threshold: float = 50.0):
    return priority_load([(p, 100) for p in healthy_percents], panic_threshold_percent=threshold)


# "Priority levels", two levels with P=1 100 % healthy.
@pytest.mark.parametrize(
    ("p0", "to_p0", "to_p1"),
    [(100, 100, 0), (72, 100, 0), (71, 99, 1), (50, 70, 30), (25, 35, 65), (0, 0, 100)],
)
def test_two_levels_p1_fully_healthy_match_envoy_table(p0, to_p0, to_p1):
    assert loads_for(p0, 100).loads == (to_p0, to_p1)


# "Priority levels", normalisation when the sum of health is below 100.
@pytest.mark.parametrize(
    ("p0", "p1", "to_p0", "to_p1"),
    [
        (100, 100, 100, 0),
        (72, 72, 100, 0),
        (71, 71, 99, 1),
        (50, 50, 70, 30),
        (25, 100, 35, 65),
        (25, 25, 50, 50),
    ],
)
def test_two_levels_normalised_match_envoy_table(p0, p1, to_p0, to_p1):
    assert loads_for(p0, p1).loads == (to_p0, to_p1)


# "Priority levels", three levels. The last row in the docs reads 36/36/28 (real-valued shares
# 35.7/35.7/28.6 rounded); Envoy's integer code gives 35/35/28 plus the remainder 2 to P0.
@pytest.mark.parametrize(
    ("healthy", "doc", "envoy_code"),
    [
        ((100, 100, 100), (100, 0, 0), (100, 0, 0)),
        ((72, 72, 100), (100, 0, 0), (100, 0, 0)),
        ((71, 71, 100), (99, 1, 0), (99, 1, 0)),
        ((50, 50, 100), (70, 30, 0), (70, 30, 0)),
        ((25, 100, 100), (35, 65, 0), (35, 65, 0)),
        ((25, 25, 100), (35, 35, 30), (35, 35, 30)),
        ((25, 25, 20), (36, 36, 28), (37, 35, 28)),
    ],
)
def test_three_levels_match_envoy_table(healthy, doc, envoy_code):
    result = loads_for(*healthy).loads
    assert result == envoy_code
    assert all(abs(a - b) <= 1 for a, b in zip(result, doc, strict=True))
    assert sum(result) == 100


# "Panic threshold", P=1 100 % healthy: normalised total health is always 100, no panic.
@pytest.mark.parametrize(
    ("p0", "to_p0", "to_p1"), [(72, 100, 0), (71, 99, 1), (50, 70, 30), (25, 35, 65), (0, 0, 100)]
)
def test_panic_never_when_lower_level_is_healthy(p0, to_p0, to_p1):
    result = loads_for(p0, 100)
    assert result.loads == (to_p0, to_p1)
    assert result.panic == (False, False)
    assert result.normalized_total_health == 100


# "Panic threshold", both levels degraded. The docs' rows 50/60 (50/50) and 25/100 (25/75) leave
# out the overprovisioning factor that the same page applies elsewhere; 5/65 reads 7/93 where the
# integer code gives 7+1 remainder / 92. The panic flags and normalised health match the docs.
@pytest.mark.parametrize(
    ("p0", "p1", "loads", "panic", "normalized"),
    [
        (72, 72, (100, 0), (False, False), 100),
        (71, 71, (99, 1), (False, False), 100),
        (50, 60, (70, 30), (False, False), 100),
        (25, 100, (35, 65), (False, False), 100),
        (25, 25, (50, 50), (True, True), 70),
        (5, 65, (8, 92), (True, False), 98),
    ],
)
def test_panic_table(p0, p1, loads, panic, normalized):
    result = loads_for(p0, p1)
    assert result.loads == loads
    assert result.panic == panic
    assert result.normalized_total_health == normalized


def test_everything_down_sends_all_to_first_level_in_panic():
    result = loads_for(0, 0, 0)
    assert result.loads == (100, 0, 0)
    assert result.panic == (True, False, False)


def test_everything_down_skips_levels_without_hosts():
    result = priority_load([(0, 0), (0, 3), (0, 2)])
    assert result.loads == (0, 100, 0)
    assert result.panic[1]


def test_panic_threshold_zero_disables_panic():
    assert loads_for(0, 0, threshold=0).panic == (False, False)
    assert loads_for(25, 25, threshold=0).panic == (False, False)


def test_no_hosts_at_all_gives_no_load():
    assert priority_load([(0, 0), (0, 0)]).loads == (0, 0)
    assert priority_load([]).loads == ()


def test_level_health_uses_envoy_integer_arithmetic():
    assert level_health(71, 100) == 99  # 140 * 71 // 100 = 99.4 -> 99
    assert level_health(5, 7) == 100
    assert level_health(2, 3) == 93
    assert level_health(0, 0) == 0
    assert level_health(1, 2, overprovisioning_factor=1.0) == 50


CALLER = Locality("us-east", "us-east-1a")


def test_priorities_from_the_callers_locality():
    order = region_order("us-east", ["us-east", "eu-west", "ap-south"], ["eu-west"])
    assert priority_of(CALLER, Locality("us-east", "us-east-1a"), order) == 0
    assert priority_of(CALLER, Locality("us-east", "us-east-1c"), order) == 1
    assert priority_of(CALLER, Locality("eu-west", "eu-west-1a"), order) == 2
    assert priority_of(CALLER, Locality("ap-south", "ap-south-1a"), order) == 3


def test_region_order_follows_failover_list_then_rtt_then_name():
    regions = ["us-east", "eu-west", "ap-south", "us-west", "sa-east"]
    rtt = {"ap-south": 0.200, "us-west": 0.060}
    assert region_order("us-east", regions, ["eu-west"], rtt) == ("eu-west", "us-west", "ap-south", "sa-east")
    assert region_order("us-east", regions, (), rtt) == ("us-west", "ap-south", "eu-west", "sa-east")
    # A listed region with no endpoints is skipped; the caller's own region is never "other".
    assert region_order("us-east", ["us-east", "eu-west"], ["ap-south", "us-east", "eu-west"]) == ("eu-west",)


def test_choose_priority_follows_loads():
    rng = random.Random(7)
    counts = Counter(choose_priority((70, 30, 0), rng) for _ in range(20_000))
    assert counts[2] == 0
    assert abs(counts[0] / 20_000 - 0.70) < 0.015


def test_choose_priority_edges_are_exact():
    class Fixed(random.Random):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def random(self):
            return self.value / 100

    assert choose_priority((70, 30), Fixed(69)) == 0  # point 70 -> still P0
    assert choose_priority((70, 30), Fixed(70)) == 1  # point 71 -> P1
    assert choose_priority((0, 100), Fixed(0)) == 1


levels_strategy = st.lists(
    st.integers(min_value=0, max_value=50).flatmap(
        lambda total: st.tuples(st.integers(0, total), st.just(total))
    ),
    min_size=1,
    max_size=5,
)


@given(levels_strategy)
def test_loads_sum_to_100_when_any_level_has_hosts(levels):
    result = priority_load(levels)
    assert all(0 <= load <= 100 for load in result.loads)
    if any(total for _, total in levels):
        assert sum(result.loads) == 100
    else:
        assert sum(result.loads) == 0


@given(levels_strategy)
def test_levels_without_health_get_no_load_unless_all_are_down(levels):
    result = priority_load(levels)
    if result.normalized_total_health > 0:
        for load, health in zip(result.loads, result.health, strict=True):
            if health == 0:
                assert load == 0


@settings(max_examples=500)
@given(levels_strategy, st.integers(0, 4))
def test_spill_over_is_monotone_in_health(levels, index):
    """More healthy hosts in a level never take load away from it, nor give more to the levels below."""
    index = index % len(levels)
    healthy, total = levels[index]
    if healthy >= total:
        return
    better = list(levels)
    better[index] = (healthy + 1, total)
    before, after = priority_load(levels), priority_load(better)
    if before.normalized_total_health == 0:
        return  # everything was down: all load sat on the first level, in panic
    assert after.loads[index] >= before.loads[index]
    assert sum(after.loads[index + 1 :]) <= sum(before.loads[index + 1 :])


@given(levels_strategy)
def test_a_fully_healthy_first_level_takes_everything(levels):
    total = max(1, levels[0][1])
    levels = [(total, total)] + levels[1:]
    assert priority_load(levels).loads[0] == 100
