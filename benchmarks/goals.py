"""The five goals NeuroFlux must meet to pay for itself, each read off the comparisons of a run.

Every figure comes from the results document; the only numbers typed here are the goals and the
published anchors they are set beside.
"""

from __future__ import annotations

from typing import Any

from benchmarks.comparisons.learning_rate import picked_rows
from benchmarks.markdown import DASH, mib, table

ACCURACY_ANCHOR = ("AugLocal about 0.65 pt behind backprop per layer on CIFAR-10, InfoPro 0.8 pt at 4 modules, "
                   "plain sequential block-wise training about 4 pt behind")


def _results(document: dict[str, Any]) -> dict[str, Any]:
    return {o["name"]: o["result"] for o in document["comparisons"] if o["status"] == "ok"}


def _stale(document: dict[str, Any]) -> dict[str, set[str]]:
    """Per comparison, the setups it ran under an earlier recipe than the setups table's (`merge_documents`)."""
    return {o["name"]: set(o.get("earlier_recipes", {})) for o in document["comparisons"]}


def _on(setup: str, comparison: str, stale: dict[str, set[str]]) -> str:
    """The setup a row was measured on, marked where that comparison ran an earlier recipe of it."""
    return f"{setup} (run under an earlier recipe)" if setup in stale.get(comparison, ()) else setup


def _verdict(value: float | None, goal: float, higher: bool = True) -> str:
    if value is None:
        return "not measured"
    return "met" if (value >= goal if higher else value <= goal) else "not met"


def _accuracy_rows(results: dict[str, Any], stale: dict[str, set[str]]) -> list[list[Any]]:
    rows = []
    for entry in results.get("deliverable", {}).get("setups", []):
        for r in (r for r in entry["repeats"] if "best_exit" in r):
            best, full = r["best_exit"]["accuracy"], r["full_backprop"]["accuracy"]
            delta = None if best is None or full is None else (best - full) * 100
            on = _on(entry["setup"], "deliverable", stale)
            rows.append(["1. accuracy", f"{on}: NeuroFlux's best exit ({r['best_exit']['name']}, picked on "
                         f"validation) {best:.1%} vs backprop's full model {full:.1%} on the test split, same "
                         f"epoch budget, each at its default rate", f"{delta:+.2f} pt", "within 1.0 pt (stretch 0.5)",
                         _verdict(delta, -1.0), ACCURACY_ANCHOR])
    for entry in results.get("learning_rate", {}).get("setups", []):
        chosen = picked_rows(entry)
        if chosen is None:
            continue
        nf, bp = chosen["neuroflux"], chosen["backprop"]
        delta = (nf["test_accuracy"] - bp["test_accuracy"]) * 100
        on = _on(entry["setup"], "learning_rate", stale)
        rows.append(["1. accuracy", f"{on}, each method at the learning rate validation picked for it "
                     f"(NeuroFlux x{nf['factor']}, backprop x{bp['factor']} its default): NeuroFlux's best exit "
                     f"(exit_{nf['exit']:02d}) {nf['test_accuracy']:.1%} vs backprop's {bp['test_accuracy']:.1%} on "
                     "the test split", f"{delta:+.2f} pt", "within 1.0 pt (stretch 0.5)", _verdict(delta, -1.0),
                     ACCURACY_ANCHOR])
    return rows


def _engine_rows(results: dict[str, Any], stale: dict[str, set[str]]) -> list[list[Any]]:
    rows = []
    for entry in results.get("engine_efficiency", {}).get("setups", []):
        ratios = {name: f["vs_backprop"] for name, f in entry["contenders"].items() if f.get("vs_backprop")}
        if not ratios:
            continue
        worst = min(ratios, key=ratios.get)
        on = _on(entry["setup"], "engine_efficiency", stale)
        rows.append(["2. engine", f"{on}: training FLOP/s of every block vs backprop's at the "
                     f"{entry['budget']} budget (worst: {worst})",
                     ", ".join(f"{v:.2f}x" for v in ratios.values()), "every block at least 0.9x",
                     _verdict(ratios[worst], 0.9), "(no published figure)"])
    return rows


def _time_rows(results: dict[str, Any], stale: dict[str, set[str]]) -> list[list[Any]]:
    rows = []
    for entry in results.get("time_to_accuracy", {}).get("setups", []):
        for budget in entry["budgets"]:
            goal = 1.5 if budget["budget"] == "stringent" else 1.0
            for name, ratio in budget["speedup"].items():
                mean = ratio["mean"] if ratio else None
                on = _on(entry["setup"], "time_to_accuracy", stale)
                rows.append(["3. time to accuracy", f"{on} at the {budget['budget']} budget: "
                             f"{name}'s time to {budget['target']:.1%} / NeuroFlux's",
                             DASH if mean is None else f"{mean:.2f}x", f"at least {goal}x",
                             _verdict(mean, goal), "published 2.3-6.1x on GPUs"])
    return rows


def _minimum_rows(results: dict[str, Any], stale: dict[str, set[str]]) -> list[list[Any]]:
    rows = []
    for entry in results.get("minimum_budget", {}).get("setups", []):
        m = entry["minimum_bytes"]
        below = entry.get("neuroflux_below")
        shown = (f"NeuroFlux {mib(m['neuroflux'])}, backprop {mib(m['backprop'])}, checkpointed "
                 f"{mib(m['backprop+checkpointing'])}")
        trained = (f"; NeuroFlux at {mib(below['budget_bytes'])} reached {below['best_val_accuracy']:.1%} "
                   "validation accuracy" if below and below.get("fits") else "")
        met = bool(below and below.get("fits"))
        on = _on(entry["setup"], "minimum_budget", stale)
        rows.append(["4. where only NeuroFlux trains", f"{on}: smallest budget at batch 1", shown + trained,
                     "NeuroFlux trains below checkpointed backprop's minimum", "met" if met else "not met",
                     "(no published figure)"])
    return rows


def _deliverable_rows(results: dict[str, Any], stale: dict[str, set[str]]) -> list[list[Any]]:
    rows = []
    for entry in results.get("deliverable", {}).get("setups", []):
        for r in (r for r in entry["repeats"] if "best_exit" in r):
            within = (r["chosen"]["accuracy"] - r["best_exit"]["accuracy"]) * 100
            reduction = r["param_reduction"]
            ok = reduction >= 10 and within >= -1.0
            on = _on(entry["setup"], "deliverable", stale)
            rows.append(["5. smaller deliverable", f"{on}: chosen exit {r['chosen']['name']} vs the full "
                         f"model's parameters; its test accuracy vs the best exit's", f"{reduction:.1f}x, "
                         f"{within:+.2f} pt", "at least 10x, within 1 pt", "met" if ok else "not met",
                         "published 10.9-29.4x"])
    return rows


def render_goals(document: dict[str, Any]) -> str:
    results, stale = _results(document), _stale(document)
    rows = [*_accuracy_rows(results, stale), *_engine_rows(results, stale), *_time_rows(results, stale),
            *_minimum_rows(results, stale), *_deliverable_rows(results, stale)]
    if not rows:
        return "No comparison of this run measures the goals.\n"
    return table(["goal", "measured on", "figure", "goal", "verdict", "anchor"], rows) + "\n"
