"""Accuracy at each method's own best learning rate: is NeuroFlux's gap to backprop a tuning artefact?

Goal 1 compares NeuroFlux's best exit with backprop's full model, each at its default rate
(NeuroFlux's is `train.lr` times `neuroflux.lr_scale`); a default that suits one method better
would decide the comparison. So both methods train at the stringent budget at their default rate
and at twice it (`train.reference_batch_size` halved, both scaled to their own batches by the same
linear rule); each method's rate is picked on the validation split, and only then are the test
accuracies read: NeuroFlux's exit with the best validation accuracy, backprop's own classifier.
Results files from before `lr_scale` existed have both defaults at `train.lr`.
"""

from __future__ import annotations

from typing import Any

from benchmarks.markdown import percent, table
from benchmarks.registry import Comparison, register_comparison
from benchmarks.workbench import RunSpec, Workbench
from nfcompile.data.sources import unaugmented
from nfcompile.learning.evaluate import eval_mode, top1_accuracies

FACTORS = (1, 2)  # times the method's default learning rate
METHODS: dict[str, tuple[str, ...]] = {"neuroflux": (), "backprop": ("train.method=backprop",)}


def _rate(factor: int, reference_batch: int) -> tuple[str, ...]:
    return () if factor == 1 else (f"train.reference_batch_size={reference_batch // factor}",)


def _exit_accuracies(net, source) -> list[float]:
    with eval_mode(net):
        return top1_accuracies(lambda x: [v for _, v in sorted(net.forward_exits(x).items())], source)


def run(bench: Workbench) -> dict[str, Any]:
    config = bench.config
    setups = []
    for setup in config.setups:
        label = config.ablation_budget
        reference = bench.recipe(setup, label).train.reference_batch_size
        contenders = {(method, factor): RunSpec(setup, label, overrides + _rate(factor, reference))
                      for method, overrides in METHODS.items() for factor in FACTORS}
        runs = bench.interleaved({f"{m} x{f}": spec for (m, f), spec in contenders.items()})
        data = bench.data(bench.recipe(setup, label))
        val = unaugmented(data.val, data.preprocessing, bench.device)
        test = unaugmented(data.test, data.preprocessing, bench.device)
        rows = []
        for (method, factor) in contenders:
            run_ = runs[f"{method} x{factor}"][0]
            if run_.net is None:
                rows.append({"method": method, "factor": factor, "fits": False, "note": run_.record.note})
                continue
            val_acc = _exit_accuracies(run_.net, val)
            best = max(range(len(val_acc)), key=val_acc.__getitem__)
            rows.append({"method": method, "factor": factor, "fits": True, "lr": config_lr(bench, run_),
                         "batch_sizes": list(run_.record.batch_sizes), "exit": run_.net.exit_units[best],
                         "val_accuracy": val_acc[best], "test_accuracy": _exit_accuracies(run_.net, test)[best],
                         "wall_seconds": run_.record.wall_seconds, "cpu_seconds": run_.record.cpu_seconds})
        picked = {}
        for method in METHODS:
            fitting = [r for r in rows if r["method"] == method and r["fits"]]
            if fitting:
                picked[method] = max(fitting, key=lambda r: r["val_accuracy"])["factor"]
        setups.append({"setup": setup.name, "budget": label, "rows": rows, "picked_factor": picked,
                       "val_samples": len(data.val), "test_samples": len(data.test)})
    return {"factors": list(FACTORS), "setups": setups}


def config_lr(bench: Workbench, run_) -> float:
    """The rate at batch 64 this run trained with (before scaling to its batches)."""
    train = bench.recipe(run_.spec.setup, run_.spec.budget, run_.spec.overrides).train
    own_scale = train.neuroflux.lr_scale if train.method == "neuroflux" else 1.0
    return train.lr * own_scale * 64 / train.reference_batch_size


def picked_rows(entry: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """Each method's run at the rate validation picked for it (None unless every method fitted)."""
    picked = entry["picked_factor"]
    if set(picked) != set(METHODS):
        return None
    return {r["method"]: r for r in entry["rows"] if r["fits"] and r["factor"] == picked[r["method"]]}


def gap_at_picked_rates(entry: dict[str, Any]) -> float | None:
    """NeuroFlux's test accuracy minus backprop's, each at the rate validation picked for it."""
    chosen = picked_rows(entry)
    return None if chosen is None else chosen["neuroflux"]["test_accuracy"] - chosen["backprop"]["test_accuracy"]


def render(result: dict[str, Any]) -> str:
    out = ["Both methods at the stringent budget, at their default learning rate (x1) and at twice it (the rate "
           "at batch 64 shown; each run scales it linearly to its own batches). Each method's rate is the one with "
           "the higher validation accuracy; test accuracies are read after that choice (NeuroFlux: the exit "
           "with the best validation accuracy; backprop: its own classifier).\n"]
    for entry in result["setups"]:
        rows = []
        for r in entry["rows"]:
            if not r["fits"]:
                rows.append([r["method"], f"x{r['factor']}", None, None, None, None, None, r["note"]])
                continue
            mark = " (picked)" if entry["picked_factor"].get(r["method"]) == r["factor"] else ""
            rows.append([r["method"], f"x{r['factor']}{mark}", f"{r['lr']:.3g}", "/".join(map(str, r["batch_sizes"])),
                         f"exit_{r['exit']:02d}", percent(r["val_accuracy"]), percent(r["test_accuracy"]),
                         f"{r['wall_seconds']:.0f} s"])
        gap = gap_at_picked_rates(entry)
        out.append(f"**{entry['setup']}** at the {entry['budget']} budget ({entry['val_samples']} validation, "
                   f"{entry['test_samples']} test images)\n")
        out.append(table(["method", "learning rate", "lr at batch 64", "batch sizes", "exit", "val accuracy",
                          "test accuracy", "wall time"], rows))
        if gap is not None:
            out.append(f"NeuroFlux's best exit minus backprop, each at its picked rate: {gap * 100:+.2f} points "
                       f"on the test split.\n")
    return "\n".join(out)


register_comparison(Comparison(
    name="learning_rate", title="Accuracy at each method's own best learning rate",
    question="Does NeuroFlux's accuracy gap to backprop survive when each method gets the learning rate "
             "that validation picks for it?", run=run, render=render))
