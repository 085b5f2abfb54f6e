"""The Pareto filter over (accuracy up, size down, latency down), on hand-made points."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nfcompile.stages.select.pareto import Point, dominates, dominator, pareto_front


def test_better_everywhere_dominates_and_not_the_reverse():
    strong, weak = Point("a", 0.9, 100, 1.0), Point("b", 0.8, 200, 2.0)
    assert dominates(strong, weak)
    assert not dominates(weak, strong)
    assert pareto_front([weak, strong]) == (strong,)


def test_better_in_one_objective_and_equal_elsewhere_dominates():
    base = Point("base", 0.9, 100, 1.0)
    for better in (Point("acc", 0.91, 100, 1.0), Point("size", 0.9, 99, 1.0), Point("lat", 0.9, 100, 0.9)):
        assert dominates(better, base), better.name
        assert pareto_front([base, better]) == (better,)


def test_equal_points_do_not_dominate_each_other_and_both_stay():
    a, b = Point("a", 0.9, 100, 1.0), Point("b", 0.9, 100, 1.0)
    assert not dominates(a, b) and not dominates(b, a)
    assert pareto_front([a, b]) == (a, b)


def test_trade_offs_all_stay_in_input_order():
    points = [Point("big", 0.95, 1000, 5.0), Point("small", 0.80, 100, 1.0), Point("mid", 0.90, 500, 3.0)]
    assert pareto_front(points) == tuple(points)


def test_a_point_kept_only_by_its_latency_is_on_the_front():
    fast = Point("fast", 0.90, 200, 0.5)  # larger than `small` and as accurate, but faster
    small = Point("small", 0.90, 100, 1.0)
    slow_twin = Point("slow", 0.90, 100, 1.5)
    assert pareto_front([fast, small, slow_twin]) == (fast, small)
    assert dominator(slow_twin, [fast, small]) is small


points_strategy = st.lists(
    st.builds(Point, name=st.text(min_size=1, max_size=4), accuracy=st.sampled_from([0.5, 0.7, 0.9, 1.0]),
              size=st.integers(1, 5), latency_ms=st.sampled_from([0.5, 1.0, 2.0])),
    min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(points_strategy)
def test_front_is_exactly_the_undominated_points(points):
    front = pareto_front(points)
    assert front, "a non-empty set always has a Pareto-optimal point"
    for p in front:
        assert not any(dominates(q, p) for q in points)
    for p in points:
        if p not in front:  # dominance is transitive, so someone on the front beats it
            assert any(dominates(q, p) for q in front)


def test_latencies_within_the_measured_spread_are_tied():
    # b is 0.2 ms faster, but either timing spreads 0.5 ms: noise, so a (more accurate) is not dominated.
    a = Point("a", 0.9, 100, 1.0, latency_spread_ms=0.5)
    b = Point("b", 0.9, 100, 0.8, latency_spread_ms=0.1)
    assert not dominates(b, a) and not dominates(a, b)
    assert pareto_front([a, b]) == (a, b)
    # Beyond the spread the faster one wins.
    c = Point("c", 0.9, 100, 0.4, latency_spread_ms=0.1)
    assert dominates(c, a) and pareto_front([a, c]) == (c,)


def test_a_tie_on_latency_leaves_the_other_objectives_to_decide():
    slow_small = Point("slow_small", 0.9, 50, 1.1, latency_spread_ms=0.3)
    fast_big = Point("fast_big", 0.9, 100, 1.0, latency_spread_ms=0.3)
    assert dominates(slow_small, fast_big)  # tied on latency, smaller at equal accuracy
