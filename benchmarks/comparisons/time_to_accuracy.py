"""1. Time to accuracy under a memory budget: NeuroFlux vs backprop vs backprop with checkpointing.

At every budget the three contenders share one plan (the same profiler sizes NeuroFlux's blocks and
both baselines' batches), the same data and, per repeat, the same seed; their order rotates between
repeats. Every contender trains the setup's epochs (NeuroFlux: per block, its first blocks fewer where the
setup sets `block_epochs`) and evaluates after every epoch at the batch its plan measured to fit within
its training step's peak; the time to accuracy is when its best validation accuracy first reached the
common target, read from the per-epoch records (the plan's profiling is shared by all three and not
counted).
"""

from __future__ import annotations

from typing import Any

from benchmarks.markdown import batches, mib, peak_of_budget, spread, table
from benchmarks.measures import contender_summary, fitting, paired_ratios, target_for, times_to_target
from benchmarks.registry import Comparison, Headline, register_comparison
from benchmarks.workbench import RunSpec, Workbench

NEUROFLUX = "neuroflux"
CONTENDERS: dict[str, tuple[str, ...]] = {
    NEUROFLUX: (),
    "backprop": ("train.method=backprop",),
    "backprop+checkpointing": ("train.method=backprop", "train.backprop.checkpointing=true"),
}


def target_rule(cap: float, step: float) -> str:
    return (f"the lowest best validation accuracy that any fitting contender reached in any repeat at that "
            f"budget, rounded down to {step:.1%} and capped at {cap:.0%}: every contender that fits reaches it")


def run(bench: Workbench) -> dict[str, Any]:
    config = bench.config
    setups = []
    for setup in config.setups:
        budgets = []
        for label in config.budget_labels():
            runs = bench.interleaved({name: RunSpec(setup, label, overrides) for name, overrides in CONTENDERS.items()})
            records = {name: [r.record for r in group] for name, group in runs.items()}
            target = target_for([r for group in records.values() for r in group], cap=config.target_cap,
                                step=config.target_step)
            to_target = {name: times_to_target(group, target) for name, group in records.items()}
            budgets.append({
                "budget": label, "budget_bytes": bench.budgets(setup)[label],
                "anchor_batch": dict(config.budget_anchors)[label], "target": target,
                "contenders": {name: contender_summary(group, target) for name, group in records.items()},
                # How many times longer a baseline took than NeuroFlux, paired within each repeat.
                "speedup": {name: paired_ratios(to_target[name], to_target[NEUROFLUX])
                            for name in CONTENDERS if name != NEUROFLUX},
                "cpu_ratio": {name: paired_ratios(fitting(records[name], "cpu_seconds"),
                                                  fitting(records[NEUROFLUX], "cpu_seconds"))
                              for name in CONTENDERS if name != NEUROFLUX},
                "runs": [r.to_dict() for group in records.values() for r in group],
            })
        setups.append({"setup": setup.name, "budgets": budgets})
    return {"target_rule": target_rule(config.target_cap, config.target_step), "setups": setups}


def render(result: dict[str, Any]) -> str:
    out = [f"Target accuracy: {result['target_rule']}. Speed-up = the baseline's time to the target / "
           "NeuroFlux's, paired within each repeat (mean, min–max over repeats). Whole-run CPU = the baseline's "
           "CPU time for its whole schedule / NeuroFlux's, paired the same way: CPU time is less "
           "sensitive to other processes on the machine. The plan (profiling) is shared by the three "
           "contenders and not counted.\n"]
    for entry in result["setups"]:
        rows, notes = [], []
        for budget in entry["budgets"]:
            for name in _ordered(budget["contenders"]):
                summary = budget["contenders"][name]
                if not summary["fits"]:
                    rows.append([budget["budget"], mib(budget["budget_bytes"]), name, "does not fit", None, None,
                                 None, None, None])
                    notes.append(f"- {name} at the {budget['budget']} budget does not fit: {summary['note']}\n")
                    continue
                speed = budget["speedup"].get(name)
                cpu = budget["cpu_ratio"].get(name)
                rows.append([
                    f"{budget['budget']} (target {budget['target']:.1%})", mib(budget["budget_bytes"]), name,
                    _batches(summary),
                    peak_of_budget(summary["measured_peak_bytes"], summary["budget_bytes"]),
                    spread(summary["seconds_to_target"], 1, " s"),
                    "1 (reference)" if name == NEUROFLUX else spread(speed, 2, "x"),
                    None if name == NEUROFLUX else spread(cpu, 2, "x"),
                    spread(summary["best_val_accuracy"], 3),
                ])
        out.append(f"**{entry['setup']}**\n")
        out.append(table(["budget", "bytes", "contender", "batch size(s)", "measured peak (of budget)",
                          "time to target", "NeuroFlux speed-up", "whole-run CPU, x of NeuroFlux", "best val accuracy"],
                          rows))
        out.extend(notes)
    return "\n".join(out)


def _batches(summary: dict[str, Any]) -> str | None:
    """Training batches, and the evaluation batches where they differ (results files from before they
    were planned have none)."""
    trained, evaluated = summary["batch_sizes"], summary.get("evaluation_batch_sizes") or []
    if not evaluated or list(evaluated) == list(trained):
        return batches(trained)
    return f"{batches(trained)} (evaluated at {batches(evaluated)})"


def _ordered(contenders: dict[str, Any]) -> list[str]:
    """The suite's order (the results file sorts its keys)."""
    return [name for name in CONTENDERS if name in contenders] + sorted(set(contenders) - set(CONTENDERS))


def headlines(result: dict[str, Any]) -> dict[str, Headline]:
    """NeuroFlux's mean speed-up over plain backprop at the tightest budget (the published figures are
    for tight budgets; the table has every budget), one figure per setup."""
    tightest = [(entry["setup"], entry["budgets"][0]) for entry in result["setups"] if entry["budgets"]]
    measured = [(setup, b) for setup, b in tightest if b["speedup"].get("backprop")]
    context = "; ".join(
        f"{setup}: backprop at batch {batches(b['contenders']['backprop']['batch_sizes'])}, NeuroFlux blocks at "
        f"{batches(b['contenders'][NEUROFLUX]['batch_sizes'])}, to {b['target']:.1%}" for setup, b in measured)
    return {"training_speedup": Headline(tuple(b["speedup"]["backprop"]["mean"] for _, b in measured), context)}


register_comparison(Comparison(
    name="time_to_accuracy", title="Time to accuracy under a memory budget",
    question="Under the same memory budget, how much sooner does NeuroFlux reach the same accuracy than "
             "backprop (largest batch that fits) and backprop with gradient checkpointing?",
    run=run, render=render, headlines=headlines))
