"""Pick one exit: the Pareto front, the recipe's constraints, then its policy.

This package never imports torch: `nfcompile select` re-runs it from stored scores in a blink.
"""

from __future__ import annotations

from typing import Sequence

from nfcompile.core.results import ExitScore, ExitScores, ExitVerdict, Selection
from nfcompile.errors import InputError
from nfcompile.recipe.schema import SelectSection
from nfcompile.stages.select.constraints import constraint_limits, decimal_size, no_feasible_exit, violations
from nfcompile.stages.select.paired import PairedCounts
from nfcompile.stages.select.pareto import LATENCY_RULE, Point, dominator, pareto_front
from nfcompile.stages.select.policies import apply_policy


def select_exit(scores: ExitScores, section: SelectSection) -> Selection:
    """Verdicts for every exit and the policy's choice among the feasible Pareto front.

    Raises GateFailed, naming the closest exits and what each breaks, when no exit meets the
    constraints.
    """
    batch, fmt = section.latency_batch_size, section.latency_format
    points = [Point.from_score(score, batch, fmt) for score in scores.exits]
    checked = [(point, violations(point, section, batch, fmt)) for point in points]
    feasible = [point for point, found in checked if not found]
    if not feasible:
        raise no_feasible_exit(checked)
    front = pareto_front(points)
    feasible_front = pareto_front(feasible)
    paired = PairedCounts.from_scores(scores)
    if section.policy == "smallest_within" and section.confidence is not None and paired is None:
        raise InputError("select.confidence: these scores hold no paired validation counts (a bundle finished "
                         "before nfcompile kept them)",
                         hint="set select.confidence: null to judge the accuracies as measured, or build again")
    choice = apply_policy(section.policy, feasible_front, section, paired)
    verdicts = []
    for point, found in checked:
        chosen = point is choice.chosen
        if chosen:
            why = f"chosen: {choice.reason}"
        elif found:
            why = "infeasible: " + "; ".join(v.text for v in found)
        elif point in feasible_front:
            why = f"on the feasible front, not chosen: {choice.passed_over[point.name]}"
        else:
            why = _dominated_why(point, feasible)
        verdicts.append(ExitVerdict(name=point.name, on_front=point in front, feasible=not found,
                                    violations=tuple(v.text for v in found), chosen=chosen, why=why,
                                    on_feasible_front=point in feasible_front))
    chosen_score = scores.get(choice.chosen.name)
    return Selection(chosen=chosen_score.name, unit=chosen_score.unit, policy=section.policy,
                     reason=choice.reason, verdicts=tuple(verdicts),
                     vs_full=compare_with_full(chosen_score, scores.full_model, scores.batch_sizes),
                     latency_batch_size=batch, constraints=constraint_limits(section), latency_format=fmt,
                     latency_rule=LATENCY_RULE)


def _describe(point: Point) -> str:
    return f"{point.accuracy:.2%}, {decimal_size(point.size)}, {point.latency_ms:.3f} ms"


def _dominated_why(point: Point, feasible: Sequence[Point]) -> str:
    better = dominator(point, feasible)
    return f"dominated by {better.name} ({_describe(better)} vs {_describe(point)})"


def compare_with_full(chosen: ExitScore, full: ExitScore, batch_sizes: Sequence[int]) -> dict[str, float | None]:
    """How much the chosen exit saves against this network's last exit (all its units and the last
    head, trained by the same method: never a backprop baseline), as ratios (2.0 = half the cost).

    throughput_gain_bN is full p50 / chosen p50 at batch N (the same batch, so the throughput
    ratio); accuracy_delta is chosen minus full accuracy on the validation split and
    test_accuracy_delta the same on the test split, as fractions, None when the last exit was not
    trained (or the test split not scored).
    """
    ratios: dict[str, float | None] = {
        "param_reduction": full.params / chosen.params,
        "mac_reduction": full.macs / chosen.macs if chosen.macs else None,
        "size_reduction": full.onnx_bytes / chosen.onnx_bytes,
    }
    for batch in batch_sizes:
        ours, theirs = chosen.latency_at(batch), full.latency_at(batch)
        usable = ours is not None and theirs is not None and ours.p50_ms > 0
        ratios[f"throughput_gain_b{batch}"] = theirs.p50_ms / ours.p50_ms if usable else None
    ratios["accuracy_delta"] = (None if full.accuracy is None or chosen.accuracy is None
                                else chosen.accuracy - full.accuracy)
    ratios["test_accuracy_delta"] = (None if full.test_accuracy is None or chosen.test_accuracy is None
                                     else chosen.test_accuracy - full.test_accuracy)
    return ratios
