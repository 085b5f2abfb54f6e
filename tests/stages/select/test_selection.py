"""Constraints, policies, verdicts and the comparison with the full model, on hand-made scores."""

from __future__ import annotations

import random
import subprocess
import sys
import typing
from statistics import NormalDist, fmean, pstdev

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from score_sets import exit_score, score_set, scored_on_images

from nfcompile.core.results import ExitScores
from nfcompile.errors import GateFailed, InputError
from nfcompile.recipe.schema import SelectSection
from nfcompile.stages.select import list_policies, select_exit
from nfcompile.stages.select.paired import PairedCounts
from nfcompile.stages.select.pareto import Point, pareto_front
from nfcompile.stages.select.policies import knee_distances

KB = 1000

# A front of four trade-offs plus one dominated exit.
ROWS = [("exit_00", 0.60, 100 * KB, 1.0),
        ("exit_01", 0.90, 200 * KB, 2.0),
        ("exit_02", 0.92, 300 * KB, 3.0),
        ("exit_03", 0.85, 400 * KB, 4.0),  # dominated by exit_01
        ("exit_04", 0.93, 1000 * KB, 10.0)]


def select(rows=ROWS, **section) -> tuple[ExitScores, object]:
    # Hand-made scores hold no paired counts: the policies' mechanics are tested on the accuracies as
    # measured (confidence null); select.confidence has tests of its own below.
    scores = score_set(rows)
    return scores, select_exit(scores, SelectSection(**{"confidence": None, **section}))


def test_policies_registered_are_those_the_schema_accepts():
    assert list_policies() == sorted(typing.get_args(SelectSection.model_fields["policy"].annotation))


def test_max_accuracy_picks_the_most_accurate_and_breaks_ties_by_size():
    _, selection = select(policy="max_accuracy")
    assert selection.chosen == "exit_04"
    # Equally accurate, both on the front (one smaller, one faster): size decides.
    twins = [("exit_00", 0.9, 500 * KB, 1.0), ("exit_01", 0.9, 400 * KB, 2.0), ("exit_02", 0.5, 100 * KB, 0.5)]
    _, selection = select(twins, policy="max_accuracy")
    assert selection.chosen == "exit_01"
    assert "as accurate as exit_01" in selection.verdict("exit_00").why


@pytest.mark.parametrize(("within", "expected"), [(0.0, "exit_04"), (1.0, "exit_02"), (3.0, "exit_01"),
                                                  (40.0, "exit_00")])
def test_smallest_within_takes_the_smallest_inside_the_accuracy_window(within, expected):
    _, selection = select(policy="smallest_within", within_points=within)
    assert selection.chosen == expected
    assert f"within {within:g} points" in selection.reason


def test_smallest_within_window_edge_is_not_decided_by_float_noise():
    rows = [("exit_00", 0.94, 100 * KB, 1.0), ("exit_01", 0.95, 200 * KB, 2.0)]  # 0.95 - 0.01 != 0.94 in floats
    _, selection = select(rows, policy="smallest_within", within_points=1.0)
    assert selection.chosen == "exit_00"


def test_smallest_within_breaks_size_ties_by_latency_then_accuracy():
    rows = [("exit_00", 0.90, 100 * KB, 2.0), ("exit_01", 0.90, 100 * KB, 1.0), ("exit_02", 0.91, 300 * KB, 3.0)]
    _, selection = select(rows, policy="smallest_within", within_points=5.0)
    assert selection.chosen == "exit_01"


def test_knee_takes_the_point_farthest_above_the_line_joining_the_front_ends():
    _, selection = select(policy="knee")
    assert selection.chosen == "exit_01"  # 0.90 at 200 kB: most of the accuracy for a fifth of the size
    front = pareto_front([Point(n, a, s, lat) for n, a, s, lat in ROWS])
    small_end, accurate_end, distances = knee_distances(front)
    assert (small_end.name, accurate_end.name) == ("exit_00", "exit_04")
    assert distances["exit_00"] == pytest.approx(0) and distances["exit_04"] == pytest.approx(0)
    assert max(distances, key=distances.get) == "exit_01"


def test_knee_without_a_knee_takes_the_most_accurate_end():
    straight = [("exit_00", 0.6, 100 * KB, 1.0), ("exit_01", 0.7, 200 * KB, 2.0), ("exit_02", 0.8, 300 * KB, 3.0)]
    _, selection = select(straight, policy="knee")
    assert selection.chosen == "exit_02"
    assert selection.reason.startswith("no knee")


def test_every_constraint_removes_what_breaks_it_with_both_numbers():
    _, selection = select(policy="max_accuracy", min_accuracy=0.9, max_latency_ms=3.5, max_size_mb=0.25,
                          max_params=60_000)
    # exit_00 fails accuracy; exit_02 size and params; exit_03 all four; exit_04 all but accuracy.
    assert selection.chosen == "exit_01"
    v = {verdict.name: verdict for verdict in selection.verdicts}
    assert v["exit_00"].violations == ("accuracy 60.00% < min_accuracy 90.00%",)
    assert v["exit_02"].violations == ("ONNX 0.300 MB > max_size_mb 0.25 (1 MB = 10^6 bytes)",
                                       "75,000 params > max_params 60,000")
    assert len(v["exit_03"].violations) == 4
    assert "FP32 p50 10.000 ms at batch 1 > max_latency_ms 3.5" in v["exit_04"].violations
    assert all(v[n].why.startswith("infeasible: ") for n in ("exit_00", "exit_02", "exit_03", "exit_04"))
    assert selection.constraints == {"min_accuracy": 0.9, "max_latency_ms": 3.5, "max_size_mb": 0.25,
                                     "max_params": 60_000}


def test_max_size_mb_is_decimal_megabytes():
    rows = [("exit_00", 0.8, 1_000_000, 1.0), ("exit_01", 0.9, 1_000_001, 1.0)]
    _, selection = select(rows, policy="max_accuracy", max_size_mb=1.0)
    assert selection.chosen == "exit_00"
    assert not selection.verdict("exit_01").feasible


def test_latency_objective_and_constraint_use_the_chosen_batch_size():
    # exit_00 is slower alone, exit_01 slower in batches of 8.
    fast_b1 = exit_score("exit_00", 0.9, 100 * KB, 0, latency_by_batch={1: 2.0, 8: 4.0})
    fast_b8 = exit_score("exit_01", 0.9, 100 * KB, 0, latency_by_batch={1: 1.0, 8: 9.0})
    scores = ExitScores((fast_b1, fast_b8), fast_b8, "ort-cpu", 10, (1, 8))
    assert select_exit(scores, SelectSection(confidence=None, latency_batch_size=1)).chosen == "exit_01"
    assert select_exit(scores, SelectSection(confidence=None, latency_batch_size=8)).chosen == "exit_00"
    limited = select_exit(scores, SelectSection(confidence=None, latency_batch_size=8, max_latency_ms=5))
    assert limited.verdict("exit_01").violations == ("FP32 p50 9.000 ms at batch 8 > max_latency_ms 5",)


def test_a_latency_batch_size_that_was_not_timed_is_an_input_error():
    with pytest.raises(InputError, match="select.latency_batch_size 32.*timed at 1, 8"):
        select(latency_batch_size=32)


def test_the_choice_comes_from_the_feasible_front_even_when_an_infeasible_exit_dominates_it():
    # exit_01 beats exit_00 everywhere but breaks max_params: exit_00 is off the front, yet the pick.
    rows = [("exit_00", 0.80, 200 * KB, 2.0), ("exit_01", 0.90, 100 * KB, 1.0)]
    scores = score_set(rows)
    scores = ExitScores((scores.exits[0], exit_score("exit_01", 0.90, 100 * KB, 1.0, params=10**6)),
                        scores.full_model, "ort-cpu", 100, (1, 8))
    selection = select_exit(scores, SelectSection(policy="max_accuracy", max_params=500_000))
    verdict = selection.verdict("exit_00")
    assert selection.chosen == "exit_00"
    assert verdict.chosen and verdict.on_feasible_front and not verdict.on_front


def test_verdicts_say_why_each_exit_was_not_chosen():
    _, selection = select(policy="smallest_within", within_points=1.0)
    v = {verdict.name: verdict for verdict in selection.verdicts}
    assert [n for n in v if v[n].chosen] == ["exit_02"]
    assert v["exit_02"].why.startswith("chosen: smallest ONNX")
    assert v["exit_03"].why.startswith("dominated by exit_01")
    assert not v["exit_03"].on_front and v["exit_03"].feasible
    assert "points below the best feasible accuracy" in v["exit_01"].why
    assert "larger than exit_02" in v["exit_04"].why
    assert all(v[n].on_front for n in ("exit_00", "exit_01", "exit_02", "exit_04"))


def test_empty_feasible_set_names_the_three_closest_exits_and_their_violations():
    with pytest.raises(GateFailed) as caught:
        select(min_accuracy=0.95, max_size_mb=0.15)
    message = str(caught.value)
    assert caught.value.exit_code == 3
    assert "\n" not in message
    closest = message.split("closest: ", 1)[1]
    # Relative misses: exit_00 37% (accuracy); exit_01 5% + 33%; exit_02 3% + 100%; exit_03, exit_04 more.
    named = [part.split(":")[0] for part in closest.split("; ")]
    assert named == ["exit_00", "exit_01", "exit_02"]
    assert "exit_00: accuracy 60.00% < min_accuracy 95.00%" in message
    assert "ONNX 0.300 MB > max_size_mb 0.15" in message
    assert "select.max_size_mb" in message and "select.min_accuracy" in message


def test_vs_full_gives_reductions_and_throughput_gain_per_batch_size():
    full = exit_score("full", 0.93, 1000 * KB, 0, params=400_000, unit=4, latency_by_batch={1: 10.0, 8: 40.0})
    scores = score_set(ROWS, full=full)
    selection = select_exit(scores, SelectSection(policy="knee"))
    chosen = scores.get(selection.chosen)
    assert selection.vs_full["param_reduction"] == pytest.approx(400_000 / chosen.params)
    assert selection.vs_full["size_reduction"] == pytest.approx(1000 / 200)
    assert selection.vs_full["throughput_gain_b1"] == pytest.approx(10.0 / chosen.latency_at(1).p50_ms)
    assert selection.vs_full["throughput_gain_b8"] == pytest.approx(40.0 / chosen.latency_at(8).p50_ms)
    assert selection.vs_full["accuracy_delta"] == pytest.approx(0.90 - 0.93)


def test_vs_full_has_no_accuracy_delta_when_the_full_model_was_not_trained():
    untrained = exit_score("full", None, 1000 * KB, 10.0, unit=9)
    selection = select_exit(score_set(ROWS, full=untrained), SelectSection(confidence=None))
    assert selection.vs_full["accuracy_delta"] is None
    assert selection.vs_full["param_reduction"] > 1


def test_selection_round_trips_through_json_types():
    _, selection = select(policy="knee", min_accuracy=0.5)
    assert type(selection).from_dict(selection.to_dict()) == selection


accuracies = st.sampled_from([0.5, 0.6, 0.7, 0.8, 0.9])
rows_strategy = st.lists(st.tuples(accuracies, st.integers(1, 6), st.sampled_from([1.0, 2.0, 3.0])),
                         min_size=1, max_size=8)


@settings(max_examples=150, deadline=None)
@given(rows_strategy, st.sampled_from(["smallest_within", "max_accuracy", "knee"]),
       st.sampled_from([None, 0.6, 0.8]), st.sampled_from([None, 4 * KB / 1e6]))
def test_any_choice_is_feasible_and_pareto_optimal_among_feasible_exits(rows, policy, min_accuracy, max_size_mb):
    named = [(f"exit_{i:02d}", acc, size * KB, lat) for i, (acc, size, lat) in enumerate(rows)]
    try:
        scores, selection = select(named, policy=policy, min_accuracy=min_accuracy, max_size_mb=max_size_mb)
    except GateFailed:
        assert all((min_accuracy and acc < min_accuracy) or (max_size_mb and size * KB > max_size_mb * 1e6)
                   for acc, size, _ in rows)
        return
    chosen = selection.verdict(selection.chosen)
    assert chosen.feasible and chosen.on_feasible_front
    feasible = [Point(v.name, scores.get(v.name).accuracy, scores.get(v.name).onnx_bytes,
                      scores.get(v.name).latency_at(1).p50_ms) for v in selection.verdicts if v.feasible]
    assert selection.chosen in {p.name for p in pareto_front(feasible)}
    assert sum(v.chosen for v in selection.verdicts) == 1


def test_the_select_package_never_imports_torch():
    code = ("import pkgutil, importlib, sys, nfcompile.stages.select as s\n"
            "for m in pkgutil.iter_modules(s.__path__): importlib.import_module(f'{s.__name__}.{m.name}')\n"
            "import matplotlib.figure\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:5]\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_latency_format_int8_uses_the_int8_latencies_for_front_and_constraints():
    import dataclasses

    # FP32: exit_00 is faster; INT8: exit_01 is, by far more than the spread.
    a = exit_score("exit_00", 0.9, 100 * KB, 0, latency_by_batch={1: 1.0})
    b = exit_score("exit_01", 0.9, 100 * KB, 0, latency_by_batch={1: 3.0})
    a = dataclasses.replace(a, int8_latency=exit_score("x_0", 0.9, 1, 0, latency_by_batch={1: 5.0}).latency)
    b = dataclasses.replace(b, int8_latency=exit_score("x_1", 0.9, 1, 0, latency_by_batch={1: 0.5}).latency)
    scores = ExitScores((a, b), b, "ort-cpu", 10, (1,))
    assert select_exit(scores, SelectSection(confidence=None)).chosen == "exit_00"
    int8 = select_exit(scores, SelectSection(confidence=None, latency_format="int8"))
    assert int8.chosen == "exit_01" and int8.latency_format == "int8"
    limited = select_exit(scores, SelectSection(confidence=None, latency_format="int8", max_latency_ms=2.0))
    assert limited.verdict("exit_00").violations == ("INT8 p50 5.000 ms at batch 1 > max_latency_ms 2",)


def test_latency_format_int8_without_int8_latencies_says_what_to_do():
    scores = ExitScores((exit_score("exit_00", 0.9, KB, 1.0),), exit_score("exit_00", 0.9, KB, 1.0), "ort-cpu", 10,
                        (1, 8))
    with pytest.raises(InputError, match="no INT8 latency"):
        select_exit(scores, SelectSection(confidence=None, latency_format="int8"))


# -- select.confidence: a paired lower bound on how far below the best an exit may be -------------

def _two_exits(images: int, best_only: int, small_only: int, both: int) -> list[list[bool]]:
    """A small exit (row 0) and a large one (row 1) over ``images``: right together on ``both``,
    only the large one on ``best_only``, only the small one on ``small_only``."""
    small = [True] * both + [False] * best_only + [True] * small_only
    large = [True] * both + [True] * best_only + [False] * small_only
    rest = images - len(small)
    return [small + [False] * rest, large + [False] * rest]


def _measured_difference(paired: PairedCounts, name: str, reference: str) -> float:
    """Accuracy of ``name`` minus ``reference``'s, from the paired counts alone."""
    i, j = paired.index[name], paired.index[reference]
    return (paired.right_where_wrong[i][j] - paired.right_where_wrong[j][i]) / paired.samples


def test_the_paired_bound_is_the_mean_per_image_difference_less_z_standard_errors():
    rng = random.Random(0)
    hits = [[rng.random() < p for _ in range(500)] for p in (0.7, 0.8, 0.85)]
    paired = PairedCounts.from_scores(scored_on_images(hits, [1, 2, 3]))
    for a, b in [("exit_00", "exit_02"), ("exit_01", "exit_02"), ("exit_02", "exit_00")]:
        d = [int(x) - int(y) for x, y in zip(hits[int(a[-1])], hits[int(b[-1])])]
        assert _measured_difference(paired, a, b) == pytest.approx(fmean(d))
        # Agresti-Min: the same with half an image more in each of the four agree/disagree cells. Every
        # image counted twice, plus one of each cell, has those proportions over 2(n + 2) images.
        adjusted = d + d + [1, -1, 0, 0]
        expected = fmean(adjusted) - NormalDist().inv_cdf(0.9) * pstdev(adjusted) / (len(adjusted) / 2) ** 0.5
        assert paired.lower_bound(a, b, 0.9) == pytest.approx(expected)
    assert paired.lower_bound("exit_01", "exit_02", 0.99) < paired.lower_bound("exit_01", "exit_02", 0.9)


def test_exits_that_differ_on_no_image_are_not_called_identical_on_a_few_images():
    same = [[True] * 50 + [False] * 10] * 2
    paired = PairedCounts.from_scores(scored_on_images(same, [1, 2]))
    assert _measured_difference(paired, "exit_00", "exit_01") == 0
    assert paired.lower_bound("exit_00", "exit_01", 0.95) < -0.02  # 60 images cannot show them within 2 points


def test_confidence_accepts_a_gap_the_exits_agree_around_and_refuses_the_same_gap_from_many_disagreements():
    # The small exit is 0.5 points below the large one on 2,000 images either way.
    agreeing = scored_on_images(_two_exits(2000, best_only=10, small_only=0, both=1690), [100 * KB, 900 * KB])
    disagreeing = scored_on_images(_two_exits(2000, best_only=210, small_only=200, both=1490), [100 * KB, 900 * KB])
    for scores in (agreeing, disagreeing):
        assert scores.exits[1].accuracy - scores.exits[0].accuracy == pytest.approx(0.005)
        assert select_exit(scores, SelectSection(confidence=None)).chosen == "exit_00"
    accepted = select_exit(agreeing, SelectSection(confidence=0.95))
    assert accepted.chosen == "exit_00"
    assert "at 95% one-sided confidence, paired on 2000 validation images (its bound: 0.77 points below)" in \
        accepted.reason
    refused = select_exit(disagreeing, SelectSection(confidence=0.95))
    assert refused.chosen == "exit_01"
    assert refused.verdict("exit_00").why == (
        "on the feasible front, not chosen: 0.50 points below the best feasible accuracy (85.00%), its 95% "
        "bound 2.17 below; within_points allows 1")
    # Ten times the images narrow the bound, but not below a point at 95%; twenty times do.
    for scale, chosen in [(10, "exit_01"), (20, "exit_00")]:
        more = scored_on_images(_two_exits(2000 * scale, 210 * scale, 200 * scale, 1490 * scale), [100 * KB, 900 * KB])
        assert select_exit(more, SelectSection()).chosen == chosen


def test_confidence_without_paired_counts_names_the_field_and_the_way_out():
    scores = score_set(ROWS)  # as scores written before the counts were kept
    with pytest.raises(InputError, match=r"^select.confidence: these scores hold no paired validation counts"):
        select_exit(scores, SelectSection())
    assert select_exit(scores, SelectSection(policy="max_accuracy")).chosen == "exit_04"  # needs no counts


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.booleans(), min_size=30, max_size=30), min_size=2, max_size=5),
       st.floats(0.0, 10.0), st.sampled_from([0.6, 0.9, 0.99]))
def test_confidence_never_ships_a_smaller_exit_than_the_accuracies_as_measured(hits, within, confidence):
    # The bound is never above the measured difference: its window is inside the measured one.
    scores = scored_on_images(hits, [(i + 1) * KB for i in range(len(hits))])
    measured = select_exit(scores, SelectSection(within_points=within, confidence=None))
    bounded = select_exit(scores, SelectSection(within_points=within, confidence=confidence))
    assert scores.get(bounded.chosen).onnx_bytes >= scores.get(measured.chosen).onnx_bytes
