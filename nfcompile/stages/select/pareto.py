"""The Pareto front over (accuracy up, ONNX size down, latency down).

An exit is on the front when no other exit is at least as good in all three objectives and
strictly better in one. Equal points do not dominate each other, so duplicates stay together.
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

    @classmethod
    def from_score(cls, score: ExitScore, latency_batch_size: int) -> "Point":
        if score.accuracy is None:
            raise ValueError(f"{score.name} has no accuracy: it cannot be placed on the front")
        latency = score.latency_at(latency_batch_size)
        if latency is None:
            measured = ", ".join(str(lat.batch_size) for lat in score.latency)
            raise InputError(f"select.latency_batch_size {latency_batch_size}: {score.name} has no latency "
                             f"at that batch size (timed at {measured})",
                             hint="make select.latency_batch_size one of bench.batch_sizes")
        return cls(score.name, score.accuracy, score.onnx_bytes, latency.p50_ms, score.params)


def dominates(a: Point, b: Point) -> bool:
    """``a`` is no worse than ``b`` in every objective and strictly better in at least one."""
    no_worse = a.accuracy >= b.accuracy and a.size <= b.size and a.latency_ms <= b.latency_ms
    better = a.accuracy > b.accuracy or a.size < b.size or a.latency_ms < b.latency_ms
    return no_worse and better


def dominator(point: Point, others: Sequence[Point]) -> Point | None:
    """The first of ``others`` that dominates ``point``, or None when it is Pareto-optimal."""
    return next((other for other in others if dominates(other, point)), None)


def pareto_front(points: Sequence[Point]) -> tuple[Point, ...]:
    """The non-dominated points, in their input order."""
    return tuple(p for p in points if dominator(p, points) is None)
