"""The Pareto front over (accuracy up, ONNX size down, latency down).

An exit is on the front when no other exit is at least as good in all three objectives and
strictly better in one. Equal points do not dominate each other, so duplicates stay together.

Latency is a measurement with noise: two exits whose p50 latencies differ by less than the measured
spread (the larger of their p90 - p50) are tied on latency, neither better nor worse (`LATENCY_RULE`).
Accuracy and size are exact counts and compare exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from nfcompile.core.results import ExitScore
from nfcompile.errors import InputError


@dataclass(frozen=True)
class Point:
    """One exit in objective space."""

    name: str
    accuracy: float  # fraction, higher is better
    size: int  # ONNX bytes, lower is better
    latency_ms: float  # p50 at the latency batch size, lower is better
    params: int = 0  # a constraint, not an objective
    latency_spread_ms: float = 0.0  # p90 - p50 of the same timing: how far apart two p50s must be to differ

    @classmethod
    def from_score(cls, score: ExitScore, latency_batch_size: int, latency_format: str = "fp32") -> "Point":
        if score.accuracy is None:
            raise ValueError(f"{score.name} has no accuracy: it cannot be placed on the front")
        latency = score.latency_at(latency_batch_size, latency_format)
        if latency is None:
            if latency_format == "int8" and not score.int8_latency:
                raise InputError(f"select.latency_format int8: {score.name} has no INT8 latency",
                                 hint="score the exits with quantize.enabled: true (a quantized graph per exit)")
            measured = ", ".join(str(lat.batch_size) for lat in score.latency)
            raise InputError(f"select.latency_batch_size {latency_batch_size}: {score.name} has no latency "
                             f"at that batch size (timed at {measured})",
                             hint="make select.latency_batch_size one of bench.batch_sizes")
        return cls(score.name, score.accuracy, score.onnx_bytes, latency.p50_ms, score.params,
                   max(0.0, latency.p90_ms - latency.p50_ms))


LATENCY_RULE = ("two exits whose p50 latencies differ by less than the measured spread (the larger of their "
                "p90 - p50) are tied on latency in the Pareto filter")


def latency_tied(a: Point, b: Point) -> bool:
    """The two p50s differ by less than the larger spread of the two timings: noise, not a difference."""
    return abs(a.latency_ms - b.latency_ms) < max(a.latency_spread_ms, b.latency_spread_ms)


def dominates(a: Point, b: Point) -> bool:
    """``a`` is no worse than ``b`` in every objective and strictly better in at least one
    (latencies within the measured spread are equal: `latency_tied`)."""
    tied = latency_tied(a, b)
    faster_or_tied = tied or a.latency_ms <= b.latency_ms
    faster = not tied and a.latency_ms < b.latency_ms
    no_worse = a.accuracy >= b.accuracy and a.size <= b.size and faster_or_tied
    better = a.accuracy > b.accuracy or a.size < b.size or faster
    return no_worse and better


def dominator(point: Point, others: Sequence[Point]) -> Point | None:
    """The first of ``others`` that dominates ``point``, or None when it is Pareto-optimal."""
    return next((other for other in others if dominates(other, point)), None)


def pareto_front(points: Sequence[Point]) -> tuple[Point, ...]:
    """The non-dominated points, in their input order."""
    return tuple(p for p in points if dominator(p, points) is None)
