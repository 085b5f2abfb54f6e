"""2. The deliverable: the exit NeuroFlux's selection picks vs the full backprop-trained model.

Both models come from the same budget, data and seed (the runs of comparison 1 where it ran). Every
NeuroFlux exit is scored and one is selected exactly as `nfcompile build` does; the backprop model is
scored the same way. Accuracy is on the test split; throughput is ONNX Runtime p50 latency at
the same batch size, timed in alternating rounds on the two ONNX files.

The selection rule is also checked on images it did not see, from the validation split alone: over
random halves, an exit is chosen on one half (with `select.confidence` and without) and compared
with that half's best exit on the other. How often it falls more than `within_points` below is what
the confidence is for; the test split plays no part in it.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from nfcompile.core.results import ExitScore, ExitScores
from nfcompile.recipe.schema import SelectSection
from nfcompile.stages.score.accuracy import exits_hits, right_where_wrong, share_right
from nfcompile.stages.score.timing import time_onnx
from nfcompile.stages.select import compare_with_full, select_exit

from benchmarks.config import Setup
from benchmarks.markdown import count, kib, spread, table
from benchmarks.measures import spread_dict
from benchmarks.registry import Comparison, Headline, register_comparison
from benchmarks.workbench import RunSpec, TrainedRun, Workbench

BACKPROP = ("train.method=backprop",)
HALVES = 1000  # random halvings of the validation split per run: the share's standard error stays under 1.6 pt


def run(bench: Workbench) -> dict[str, Any]:
    config = bench.config
    setups = []
    for setup in config.setups:
        repeats = []
        for repeat in range(config.repeats):
            seed = config.seed + repeat
            neuroflux = bench.train(RunSpec(setup, config.deliverable_budget, (), seed))
            backprop = bench.train(RunSpec(setup, config.deliverable_budget, BACKPROP, seed))
            if neuroflux.net is None or backprop.net is None:
                missing = neuroflux if neuroflux.net is None else backprop
                repeats.append({"seed": seed, "note": f"{missing.record.method} does not fit: {missing.record.note}"})
                continue
            folder = bench.scratch / f"deliverable-{setup.name}-{repeat}"
            repeats.append(_compare(bench, setup, neuroflux, backprop, folder) | {"seed": seed})
        setups.append({"setup": setup.name, "budget": config.deliverable_budget, "repeats": repeats,
                       "summary": _summary([r for r in repeats if "note" not in r])})
    return {"setups": setups}


def _compare(bench: Workbench, setup: Setup, neuroflux: TrainedRun, backprop: TrainedRun,
             folder: Path) -> dict[str, Any]:
    recipe = bench.recipe(setup, bench.config.deliverable_budget)
    exits, selection = bench.select(neuroflux, folder / "neuroflux")
    chosen = exits.get(selection.chosen)
    full = bench.score(backprop, folder / "backprop").full_model
    ratios = compare_with_full(chosen, full, recipe.bench.batch_sizes)
    size = recipe.data.image_size
    gains: dict[int, list[float]] = {b: [] for b in recipe.bench.batch_sizes}
    files = {"chosen": folder / "neuroflux" / chosen.onnx_file, "full": folder / "backprop" / full.onnx_file}
    for round_ in range(bench.config.timing_rounds):
        order = ["chosen", "full"] if round_ % 2 == 0 else ["full", "chosen"]
        p50 = {}
        for name in order:
            timing = time_onnx(files[name], (3, size, size), recipe.bench)
            p50[name] = {lat.batch_size: lat.p50_ms for lat in timing.latency}
        for batch in gains:
            gains[batch].append(p50["full"][batch] / p50["chosen"][batch])
    return {
        "chosen": _exit(chosen), "full_backprop": _exit(full),
        # NeuroFlux's best exit by validation accuracy (goal 1 compares its test accuracy with backprop's).
        "best_exit": _exit(max((e for e in exits.exits if e.accuracy is not None), key=lambda e: e.accuracy)),
        "neuroflux_full_accuracy": exits.full_model.test_accuracy,
        "exits_scored": len(exits.exits), "units": len(neuroflux.net.units), "val_samples": exits.val_samples,
        "policy": selection.policy,
        "reason": selection.reason,
        "accuracy_delta": ratios["test_accuracy_delta"],  # the headline: the test split
        "param_reduction": ratios["param_reduction"],
        "size_reduction": ratios["size_reduction"], "mac_reduction": ratios["mac_reduction"],
        "throughput_gain": {str(b): values for b, values in gains.items()},
        "held_out": _held_out(bench, neuroflux, exits, recipe.select),
    }


def _held_out(bench: Workbench, run: TrainedRun, scores: ExitScores, section: SelectSection) -> dict[str, Any]:
    """The selection rule on validation images it did not see: over `HALVES` random halvings of the
    validation split, exits are scored and one selected on the first half, as measured and with the
    recipe's `confidence`; on the second half, how far the chosen exit falls below the first half's
    most accurate exit (what the policy measured "the best" against)."""
    recipe = bench.recipe(run.spec.setup, run.spec.budget, run.spec.overrides)
    data = bench.data(recipe)
    units = [score.unit for score in scores.exits]
    hits = exits_hits(run.net, units, data.val, data.preprocessing, device=bench.device)
    matrix = torch.stack([hits[unit] for unit in units])
    images = matrix.shape[1]
    rules = {"as measured": section.model_copy(update={"confidence": None})}
    if section.confidence is not None:
        rules[f"confidence {section.confidence:g}"] = section
    most_accurate = section.model_copy(update={"policy": "max_accuracy"})
    row = {score.name: i for i, score in enumerate(scores.exits)}
    generator = torch.Generator().manual_seed(run.spec.seed)
    gaps: dict[str, list[float]] = {name: [] for name in rules}
    picks: dict[str, Counter] = {name: Counter() for name in rules}
    for _ in range(HALVES):
        order = torch.randperm(images, generator=generator)
        seen, unseen = matrix[:, order[: images // 2]], matrix[:, order[images // 2:]]
        half = _scores_on(scores, seen)
        unseen_accuracy = unseen.sum(dim=1) / unseen.shape[1]
        best = row[select_exit(half, most_accurate).chosen]
        for name, rule in rules.items():
            chosen = select_exit(half, rule).chosen
            gaps[name].append(float(unseen_accuracy[row[chosen]] - unseen_accuracy[best]) * 100)
            picks[name][chosen] += 1
    return {"halvings": HALVES, "images": [images // 2, images - images // 2],
            "within_points": section.within_points,
            "rules": {name: {"beyond_share": sum(g < -section.within_points for g in gaps[name]) / HALVES,
                             "mean_gap_points": sum(gaps[name]) / HALVES, "picks": dict(sorted(picks[name].items()))}
                      for name in rules}}


def _scores_on(scores: ExitScores, hits: torch.Tensor) -> ExitScores:
    """``scores`` with the validation accuracies and paired counts of the images in ``hits``."""
    exits = tuple(dataclasses.replace(score, accuracy=share_right(row)) for score, row in zip(scores.exits, hits))
    return dataclasses.replace(scores, exits=exits, val_samples=hits.shape[1],
                               val_right_where_wrong=right_where_wrong(hits))


def _exit(score: ExitScore) -> dict[str, Any]:
    # "accuracy" is the test split's (selection used the validation split: "val_accuracy").
    return {"name": score.name, "unit": score.unit, "accuracy": score.test_accuracy, "val_accuracy": score.accuracy,
            "params": score.params,
            "macs": score.macs, "onnx_bytes": score.onnx_bytes,
            "p50_ms": {str(lat.batch_size): lat.p50_ms for lat in score.latency}}


def _summary(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    if not repeats:
        return {}
    summary: dict[str, Any] = {key: spread_dict([r[key] for r in repeats])
                               for key in ("accuracy_delta", "param_reduction", "size_reduction", "mac_reduction")}
    summary["throughput_gain"] = {batch: spread_dict([v for r in repeats for v in r["throughput_gain"][batch]])
                                  for batch in repeats[0]["throughput_gain"]}
    return summary


def render(result: dict[str, Any]) -> str:
    batch_sizes = sorted({b for e in result["setups"] for b in e["summary"].get("throughput_gain", {})}, key=int)
    rows = []
    for entry in result["setups"]:
        done = [r for r in entry["repeats"] if "note" not in r]
        if not done:
            rows.append([entry["setup"], "; ".join(r["note"] for r in entry["repeats"])]
                        + [None] * (6 + len(batch_sizes)))
            continue
        s = entry["summary"]
        first = done[0]
        rows.append([
            entry["setup"], " / ".join(r["chosen"]["name"] for r in done),
            " / ".join(f"{r['chosen']['accuracy']:.1%} vs {r['full_backprop']['accuracy']:.1%} "
                       f"({_last_exit(r['neuroflux_full_accuracy'])})" for r in done),
            spread(s["accuracy_delta"], 1, " pt", scale=100),
            f"{count(first['chosen']['params'])} vs {count(first['full_backprop']['params'])}",
            spread(s["param_reduction"], 1, "x"),
            f"{kib(first['chosen']['onnx_bytes'])} vs {kib(first['full_backprop']['onnx_bytes'])}",
            *(spread(s["throughput_gain"].get(b), 2, "x") for b in batch_sizes),
        ])
    text = table(["setup", "chosen exit (per repeat)", "test accuracy: exit vs full backprop (NeuroFlux's last exit)",
                  "accuracy difference", "parameters (first repeat)", "parameter reduction",
                  "ONNX size (first repeat)", *(f"throughput gain, batch {b}" for b in batch_sizes)], rows)
    example = next((r for e in result["setups"] for r in e["repeats"] if "note" not in r), None)
    if example:
        text += (f"\nSelection policy `{example['policy']}`, as in `nfcompile build` (e.g. {example['reason']}). "
                 "Accuracy difference = exit minus full backprop model, in points. Throughput gain = the full "
                 "model's p50 latency / the exit's, ONNX Runtime on the CPU at the same batch size, over "
                 "alternating timing rounds and repeats.\n")
    return text + _render_held_out(result)


def _last_exit(accuracy: float | None) -> str:
    # None: the blocks before it stopped improving and it was not trained (neuroflux.stop_stalled_blocks).
    return "not trained" if accuracy is None else f"{accuracy:.1%}"


def _render_held_out(result: dict[str, Any]) -> str:
    rows = []
    for entry in result["setups"]:
        for r in (r for r in entry["repeats"] if "held_out" in r):
            held = r["held_out"]
            for name, rule in held["rules"].items():
                rows.append([entry["setup"], r["seed"], name, f"{rule['beyond_share']:.1%}",
                             f"{rule['mean_gap_points']:+.2f} pt",
                             ", ".join(f"{exit_} {n}" for exit_, n in rule["picks"].items())])
    if not rows:
        return ""
    first = next(r["held_out"] for e in result["setups"] for r in e["repeats"] if "held_out" in r)
    return ("\nThe selection rule on images it did not see (validation split only): over "
            f"{first['halvings']} random halvings, exits chosen on {first['images'][0]} images and checked on the "
            f"other {first['images'][1]} against the first half's most accurate exit. \"beyond\" = the share "
            f"of halvings where the chosen exit fell more than within_points ({first['within_points']:g}) below "
            "it.\n\n" + table(["setup", "seed", "rule", "beyond", "mean gap", "exits chosen (halvings)"], rows))


def headlines(result: dict[str, Any]) -> dict[str, Headline]:
    entries = [e for e in result["setups"] if e["summary"]]
    exits = "; ".join(f"{e['setup']}: " + ", ".join(f"{r['chosen']['name']} (unit {r['chosen']['unit'] + 1} of "
                                                    f"{r['units']})" for r in e["repeats"] if "note" not in r)
                      for e in entries)
    macs = "; ".join(f"{e['setup']}: {e['summary']['mac_reduction']['mean']:.2f}x fewer MACs, batch-1 p50 of "
                     f"the full model {_first(e)['full_backprop']['p50_ms']['1']:.2f} ms" for e in entries
                     if e["summary"].get("mac_reduction") and "1" in _first(e)["full_backprop"]["p50_ms"])
    gains = tuple(g["mean"] for e in entries for g in e["summary"]["throughput_gain"].values())
    return {"param_reduction": Headline(tuple(e["summary"]["param_reduction"]["mean"] for e in entries),
                                        f"chosen exits {exits}"),
            "throughput_gain": Headline(gains, macs)}


def _first(entry: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in entry["repeats"] if "note" not in r)


register_comparison(Comparison(
    name="deliverable", selects_exits=True, title="The deliverable: chosen exit vs the full backprop-trained model",
    question="What does the exit NeuroFlux ships cost in accuracy, and what does it save in parameters, file "
             "size and inference time against the full model trained with backprop?",
    run=run, render=render, headlines=headlines))
