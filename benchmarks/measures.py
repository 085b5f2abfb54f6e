"""Pure arithmetic on measurements: spreads over repeats, accuracy curves, time to a target.

No torch here: these functions turn what the engine recorded into the figures the suite reports,
so the tests can check them on hand-made numbers.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from nfcompile.core.results import METER_SCAN, NOISE_SCALE, Result, TrainResult

if TYPE_CHECKING:
    from benchmarks.workbench import RunRecord

Curve = tuple[tuple[float, float], ...]  # (seconds since training started, best accuracy so far)


@dataclass(frozen=True)
class Spread(Result):
    """One figure over repeats: every value kept, so a reader can judge the noise."""

    mean: float
    min: float
    max: float
    std: float  # sample standard deviation; 0 for a single value
    values: tuple[float, ...]


def spread(values: Sequence[float | None]) -> Spread | None:
    """The spread of the measured values; None where nothing was measured."""
    kept = [float(v) for v in values if v is not None]
    if not kept:
        return None
    std = statistics.stdev(kept) if len(kept) > 1 else 0.0
    return Spread(mean=statistics.fmean(kept), min=min(kept), max=max(kept), std=std, values=tuple(kept))


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def accuracy_curve(result: TrainResult) -> Curve:
    """When each epoch ended (seconds since training started) and the best validation accuracy
    of any trained exit by then.

    NeuroFlux blocks train one after another: a block's epochs start after the earlier blocks'
    training and caching passes, its own memory meter's scan and (batch_policy noise_scale) the
    measurement of its noise scale. What a block keeps counts when its seconds end: with slim heads
    (neuroflux.slim_heads) its exits' accuracy after the epochs. Skipped blocks (early stop) add nothing.
    """
    points: list[tuple[float, float]] = []
    started, best = 0.0, 0.0
    for block in result.blocks:
        if not block.trained:
            continue
        started += block.time_spent.get(METER_SCAN, 0.0)  # before the block's first step, not in its seconds
        elapsed = started + block.time_spent.get(NOISE_SCALE, 0.0)  # in its seconds, before its first epoch
        for epoch in block.history:
            elapsed += epoch.seconds
            best = max(best, *epoch.val_accuracy)
            points.append((elapsed, best))
        if block.best_val_accuracy and max(block.best_val_accuracy) > best:
            best = max(block.best_val_accuracy)
            points.append((started + block.seconds, best))
        started += block.seconds + block.cache_seconds
    return tuple(points)


def time_to_target(curve: Curve, target: float) -> float | None:
    """Seconds until the curve first reaches ``target``; None when it never does."""
    for seconds, accuracy in curve:
        if accuracy >= target - 1e-9:  # accuracies are fractions of a sample count: exact ties count
            return seconds
    return None


def common_target(best_accuracies: Sequence[float], *, cap: float, step: float) -> float:
    """The accuracy every contender reached: the lowest of their best accuracies, rounded down to
    ``step`` and at most ``cap`` (so the target is not the noisy top of the weakest curve)."""
    if not best_accuracies:
        raise ValueError("a common target needs at least one contender's accuracy")
    lowest = min(best_accuracies)
    floored = math.floor(lowest / step + 1e-9) * step
    return round(min(cap, floored), 6)


def target_for(records: Sequence["RunRecord"], *, cap: float, step: float) -> float | None:
    """The common target of these runs (see `common_target`); None where none of them trained."""
    best = [r.best_val_accuracy for r in records if r.fits and r.best_val_accuracy is not None]
    return common_target(best, cap=cap, step=step) if best else None


def times_to_target(records: Sequence["RunRecord"], target: float | None) -> list[float | None]:
    return [time_to_target(r.curve, target) if r.fits and target is not None else None for r in records]


def fitting(records: Sequence["RunRecord"], field: str) -> list[float | None]:
    """One field of every run, None for runs that did not fit (so pairs keep their repeat)."""
    return [getattr(r, field) if r.fits else None for r in records]


def relative_error(predicted: float, measured: float) -> float | None:
    """(predicted - measured) / measured: positive where the prediction was too high."""
    if measured <= 0:
        return None
    return (predicted - measured) / measured


def contender_summary(records: Sequence["RunRecord"], target: float | None) -> dict[str, object]:
    """One contender over its repeats: whether it fits, its batch sizes and peaks, and its times."""
    fitted = [r for r in records if r.fits]
    if not fitted:
        return {"fits": False, "note": records[0].note if records else "not run"}
    first = fitted[0]
    seconds = times_to_target(fitted, target)
    return {
        "fits": True,
        "method": first.method,
        "batch_sizes": list(first.batch_sizes),
        "evaluation_batch_sizes": list(first.evaluation_batch_sizes),
        "budget_bytes": first.budget_bytes,
        "measured_peak_bytes": max(max(r.measured_peak_bytes) for r in fitted),
        "predicted_peak_bytes": max(max(r.predicted_peak_bytes) for r in fitted),
        "wall_seconds": spread_dict([r.wall_seconds for r in fitted]),
        "cpu_seconds": spread_dict([r.cpu_seconds for r in fitted]),
        "best_val_accuracy": spread_dict([r.best_val_accuracy for r in fitted]),
        "seconds_to_target": spread_dict(seconds) if target is not None else None,
        "reached_target": sum(s is not None for s in seconds) if target is not None else None,
        "repeats": len(fitted),
    }


def paired_ratios(numerators: Sequence[float | None], denominators: Sequence[float | None]) -> dict | None:
    """Ratios of runs made side by side in the same repeat (numerator / denominator), and their spread."""
    return spread_dict([ratio(a, b) for a, b in zip(numerators, denominators)])


def spread_dict(values: Sequence[float | None]) -> dict | None:
    """`spread` as plain JSON, for the results file."""
    value = spread(values)
    return None if value is None else value.to_dict()
