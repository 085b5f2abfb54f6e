"""Policies: which point of the feasible Pareto front to ship.

Each policy gets the front of the feasible exits (never empty) and returns its choice, the
reason, and for every other front point why it lost. Choosing only from that front keeps every
choice Pareto-optimal among the exits that meet the constraints.

- `max_accuracy`: the most accurate; ties go to the smaller, then the faster.
- `smallest_within`: the smallest ONNX among points at most `within_points` accuracy points
  below the best feasible accuracy; ties go to the faster, then the more accurate. With
  `confidence`, "at most" holds for a one-sided lower confidence bound of the difference, paired
  on the validation images (`paired`), not only for the difference as measured.
- `knee`: normalize accuracy and size to [0, 1] over the front, draw the line from its smallest
  end to its most accurate end, and take the point farthest above that line: where accuracy
  stops being cheap. With no point above the line (a front of one or two points, or a straight
  or sagging one) there is no knee, and the most accurate end is taken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from nfcompile.recipe.schema import SelectSection
from nfcompile.stages.select.constraints import decimal_size
from nfcompile.stages.select.paired import PairedCounts
from nfcompile.stages.select.pareto import Point

EPSILON = 1e-9  # accuracies are ratios of counts: float noise must not decide a window edge


@dataclass(frozen=True)
class PolicyChoice:
    chosen: Point
    reason: str
    passed_over: dict[str, str]  # other front points -> why not


# (feasible front, the recipe's select section, paired validation counts where the scores hold them)
Policy = Callable[[Sequence[Point], SelectSection, PairedCounts | None], PolicyChoice]
_POLICIES: dict[str, Policy] = {}


def register_policy(name: str) -> Callable[[Policy], Policy]:
    def register(policy: Policy) -> Policy:
        if name in _POLICIES:
            raise ValueError(f"selection policy {name!r} registered twice")
        _POLICIES[name] = policy
        return policy
    return register


def list_policies() -> list[str]:
    return sorted(_POLICIES)


def apply_policy(name: str, front: Sequence[Point], section: SelectSection,
                 paired: PairedCounts | None = None) -> PolicyChoice:
    if not front:
        raise ValueError("a policy needs at least one point")
    return _POLICIES[name](front, section, paired)


def _acc(point: Point) -> str:
    return f"{point.accuracy:.2%}"


def _percent(confidence: float) -> str:
    return f"{confidence * 100:g}%"


@register_policy("max_accuracy")
def most_accurate(front: Sequence[Point], section: SelectSection, paired: PairedCounts | None) -> PolicyChoice:
    chosen = _most_accurate(front)
    passed = {}
    for p in front:
        if p is not chosen:
            passed[p.name] = (f"less accurate than {chosen.name} ({_acc(p)} vs {_acc(chosen)})"
                              if p.accuracy < chosen.accuracy else
                              f"as accurate as {chosen.name}, which is smaller or faster")
    return PolicyChoice(chosen, f"most accurate feasible exit ({_acc(chosen)})", passed)


def _most_accurate(front: Sequence[Point]) -> Point:
    return min(front, key=lambda p: (-p.accuracy, p.size, p.latency_ms, p.name))


@register_policy("smallest_within")
def smallest_within(front: Sequence[Point], section: SelectSection, paired: PairedCounts | None) -> PolicyChoice:
    best = _most_accurate(front)
    allowed = section.within_points / 100
    confidence = section.confidence
    if confidence is not None and paired is None:
        raise ValueError("select.confidence needs the scores' paired validation counts")

    def lowest(p: Point) -> float:  # how far below the best p may be, as a (negative) fraction
        if confidence is None or p is best:
            return p.accuracy - best.accuracy
        return paired.lower_bound(p.name, best.name, confidence)

    window = [p for p in front if lowest(p) >= -allowed - EPSILON]
    chosen = min(window, key=lambda p: (p.size, p.latency_ms, -p.accuracy, p.name))
    passed = {}
    for p in front:
        if p is chosen:
            continue
        if p not in window:
            below = f"{(best.accuracy - p.accuracy) * 100:.2f} points below the best feasible accuracy ({_acc(best)})"
            bound = "" if confidence is None else f", its {_percent(confidence)} bound {-lowest(p) * 100:.2f} below"
            passed[p.name] = f"{below}{bound}; within_points allows {section.within_points:g}"
        elif p.size > chosen.size:
            passed[p.name] = f"larger than {chosen.name} ({decimal_size(p.size)} vs {decimal_size(chosen.size)})"
        else:
            passed[p.name] = f"as small as {chosen.name}, which is faster or more accurate"
    reason = (f"smallest ONNX ({decimal_size(chosen.size)}) within {section.within_points:g} points of the "
              f"best feasible accuracy ({_acc(best)}, {best.name})")
    if confidence is not None:
        reason += f" at {_percent(confidence)} one-sided confidence, paired on {paired.samples} validation images"
        if chosen is not best:
            reason += f" (its bound: {-lowest(chosen) * 100:.2f} points below)"
    reason += f"; its accuracy {_acc(chosen)}"
    return PolicyChoice(chosen, reason, passed)


def _scaled(value: float, low: float, high: float) -> float:
    return 0.0 if high == low else (value - low) / (high - low)


def knee_distances(front: Sequence[Point]) -> tuple[Point, Point, dict[str, float]]:
    """The front's smallest and most accurate ends, and every point's signed distance above the
    line joining them, in accuracy and size normalized to [0, 1] over the front."""
    small_end = min(front, key=lambda p: (p.size, -p.accuracy, p.latency_ms))
    accurate_end = min(front, key=lambda p: (-p.accuracy, p.size, p.latency_ms))
    sizes = [p.size for p in front]
    accuracies = [p.accuracy for p in front]

    def xy(p: Point) -> tuple[float, float]:
        return (_scaled(p.size, min(sizes), max(sizes)), _scaled(p.accuracy, min(accuracies), max(accuracies)))

    (x0, y0), (x1, y1) = xy(small_end), xy(accurate_end)
    length = math.hypot(x1 - x0, y1 - y0)
    distances = {}
    for p in front:
        x, y = xy(p)
        # Cross product: positive above the line (more accuracy for the size than the straight trade).
        distances[p.name] = 0.0 if length == 0 else ((x1 - x0) * (y - y0) - (y1 - y0) * (x - x0)) / length
    return small_end, accurate_end, distances


@register_policy("knee")
def knee(front: Sequence[Point], section: SelectSection, paired: PairedCounts | None) -> PolicyChoice:
    small_end, accurate_end, distances = knee_distances(front)
    above = [p for p in front if distances[p.name] > EPSILON]
    if above:
        chosen = min(above, key=lambda p: (-distances[p.name], p.size, p.name))
        reason = (f"knee of the feasible front: farthest above the line from {small_end.name} to "
                  f"{accurate_end.name} in normalized accuracy vs size (distance {distances[chosen.name]:.3f}); "
                  f"its accuracy {_acc(chosen)}, {decimal_size(chosen.size)}")
    else:
        chosen = accurate_end
        reason = (f"no knee: no point of the feasible front ({len(front)} point(s)) lies above the line "
                  f"joining its ends, so its most accurate end ({_acc(chosen)})")
    passed = {}
    for p in front:
        if p is chosen:
            continue
        passed[p.name] = (f"closer to the line joining the front's ends than {chosen.name} "
                          f"(distance {distances[p.name]:.3f} vs {distances[chosen.name]:.3f})" if above else
                          f"the front has no knee; its most accurate end is {chosen.name}")
    return PolicyChoice(chosen, reason, passed)
