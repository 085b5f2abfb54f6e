"""Where only NeuroFlux trains: the smallest budget at which each method can train at all (batch 1),
and a NeuroFlux run below what checkpointed backprop needs.

The minima come from the planner's profiles: NeuroFlux's is the plan's own refusal threshold (its
hungriest unit at batch 1, the rest of the network resident); backprop's and checkpointed backprop's
are their measured step peaks extrapolated to batch 1 over the same planning share. Then NeuroFlux
trains at the budget half-way between its minimum and checkpointed backprop's, and its measured peak
(the independent meter) and accuracy are reported.
"""

from __future__ import annotations

import math
from typing import Any

from benchmarks.markdown import batches, mib, table
from benchmarks.registry import Comparison, register_comparison
from benchmarks.workbench import RunSpec, Workbench
from nfcompile.stages.plan import PLANNING_SHARE


def batch_one_bytes(measurements: tuple[tuple[int, int], ...]) -> int | None:
    """A step's peak at batch 1, on the line through the two smallest measured batches."""
    points = sorted(measurements)
    if not points:
        return None
    if points[0][0] == 1 or len(points) == 1:
        return points[0][1]
    (b1, m1), (b2, m2) = points[:2]
    return int(m1 - (b1 - 1) * (m2 - m1) / (b2 - b1))


def run(bench: Workbench) -> dict[str, Any]:
    config = bench.config
    setups = []
    for setup in config.setups:
        plan = bench.plan(bench.recipe(setup, config.ablation_budget))
        minima = {
            "neuroflux": plan.min_budget_bytes,
            "backprop": batch_one_bytes(plan.backprop_measurements),
            "backprop+checkpointing": batch_one_bytes(plan.checkpointing_measurements),
        }
        minima = {k: None if v is None else math.ceil(v / PLANNING_SHARE) if k != "neuroflux" else v
                  for k, v in minima.items()}
        entry: dict[str, Any] = {"setup": setup.name, "minimum_bytes": minima}
        below = minima["backprop+checkpointing"]
        if below and minima["neuroflux"] < below:
            budget = (minima["neuroflux"] + below) // 2
            run_ = bench.train(RunSpec(setup, config.ablation_budget, (f"budget.memory={budget}",)))
            record = run_.record
            entry["neuroflux_below"] = {
                "budget_bytes": budget, "fits": record.fits, "note": record.note,
                "batch_sizes": list(record.batch_sizes), "measured_peak_bytes": list(record.measured_peak_bytes),
                "best_val_accuracy": record.best_val_accuracy, "wall_seconds": record.wall_seconds}
        setups.append(entry)
    return {"setups": setups}


def render(result: dict[str, Any]) -> str:
    out = ["The smallest budget at which each method trains at batch 1 (from the planner's profiles), and "
           "NeuroFlux trained half-way between its minimum and checkpointed backprop's: a budget where "
           "neither backprop can run at all.\n"]
    rows = []
    for entry in result["setups"]:
        m = entry["minimum_bytes"]
        below = entry.get("neuroflux_below")
        trained = None
        if below:
            trained = (f"at {mib(below['budget_bytes'])}: blocks {batches(below['batch_sizes'])}, measured peak "
                       f"{mib(max(below['measured_peak_bytes'] or [0]))}, best val accuracy "
                       f"{below['best_val_accuracy']:.1%}" if below["fits"] else f"does not fit: {below['note']}")
        rows.append([entry["setup"], mib(m["neuroflux"]), mib(m["backprop"]), mib(m["backprop+checkpointing"]),
                     trained or "NeuroFlux's minimum is not below checkpointed backprop's"])
    out.append(table(["setup", "NeuroFlux", "backprop", "backprop + checkpointing", "NeuroFlux below both"], rows))
    return "\n".join(out)


register_comparison(Comparison(
    name="minimum_budget", title="Where only NeuroFlux trains: the smallest budget of each method",
    question="Below what budget can neither backprop nor checkpointed backprop train at all, and does "
             "NeuroFlux still train to a useful accuracy there?", run=run, render=render))
