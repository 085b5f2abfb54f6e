"""3. Ablations: each NeuroFlux design choice switched off, one at a time, against the default.

Every contender (the default and one variant per ablation) train interleaved at one budget, repeat after
repeat with rotating order, on the same data and seed. Each variant is compared with the default
from the same repeat:

- adaptive vs fixed-width auxiliary heads (`train.neuroflux.head.policy`): memory, batch sizes, accuracy;
- per-block batch sizes vs one global batch (every block at the plan's smallest): time;
- the activation cache vs recomputing the earlier blocks for every batch (`cache.placement: recompute`): time;
- early stop of stalled blocks (`stop_stalled_blocks`) on vs off: time and the exit selection picks;
- large-batch learning: every block's batch capped at 32 (`max_batch_size`: more, smaller steps per
  epoch; where the setup's cap is above 32), each block's batch lowered to its units' gradient noise
  scale (`batch_policy: noise_scale`: at every budget, since the budget binds the batch least at the
  larger ones), and NeuroFlux at backprop's learning rate (`neuroflux.lr_scale: 1` against the default
  2): accuracy against time;
- block batches up to 128 vs the setup's cap (64 or 32), where a setup caps them (the Fashion-MNIST setups):
  at every budget, since the cap binds most where the budget allows large batches;
- at most two units per block (`max_units_per_block`) vs blocks split by batch size only: at every
  budget, since with a larger budget every unit fits one block at one batch size and the limit is all
  that splits it;
- heads of at most 32 filters (`head.filters`) vs 64, where a setup narrows them: accuracy, and the
  chosen exit's parameters;
- a block's heads warm-started from the previous block's last head where unit and head match
  (`head.warm_start`) vs every head from random weights: at every budget;
- fewer epochs for the first blocks (`block_epochs`) vs every block at train.epochs, where a setup
  shortens them (ResNet on Fashion-MNIST): at every budget, time and accuracy;
- slim heads trained on the frozen units' cached features, shipped where they do at least as well
  (`slim_heads`), vs every exit shipping the head its unit learned from, where a setup sets them: at every
  budget, time, accuracy and the exit selection picks;
- a head epoch after every block (`head_epochs`: the heads trained on their frozen units) vs none, where a
  setup ships slim heads: time, accuracy and the exit selection picks;
- the setup's slim-head epochs (`slim_heads.epochs`) vs the default 10, where a setup sets them (ResNet on
  Fashion-MNIST): time, accuracy and the exit selection picks;
- the setup's slim-head batch (`slim_heads.batch_size`) vs the default 64, where a setup sets it (ResNet on
  Fashion-MNIST): time, accuracy and the exit selection picks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.config import Setup, SuiteConfig
from benchmarks.markdown import batches, count, mib, peak_of_budget, spread, table
from benchmarks.measures import contender_summary, fitting, paired_ratios, spread_dict, target_for, times_to_target
from benchmarks.registry import Comparison, register_comparison
from benchmarks.workbench import RunSpec, TrainedRun, Workbench, setup_recipe

DEFAULT = "neuroflux (default)"


@dataclass(frozen=True)
class Ablation:
    name: str
    variant: str  # the contender's label
    default_side: str  # what the default does, for the table
    overrides: tuple[str, ...] = ()
    global_batch: bool = False
    selects_exit: bool = False  # score the exits and run selection for both sides
    every_budget: bool = False  # also against the default at the suite's other budgets
    # Runs only on setups that set this field (elsewhere the variant would be, or barely differ from, the default).
    only_where_setup_sets: str | None = None
    # Runs only where the block batch cap (`max_batch_size`, the setup's or the base recipe's) is above this.
    only_where_cap_above: int | None = None


ABLATIONS = (
    Ablation("heads", "fixed-width heads", "adaptive heads", ("train.neuroflux.head.policy=fixed",)),
    # Only where the setup's heads pool and deepen (the Fashion-MNIST setups): else it is the default.
    Ablation("head_capacity", "plain heads (one conv, no pooling)", "pooled two-conv heads",
             ("train.neuroflux.head.pool_to=null", "train.neuroflux.head.depth=1"), selects_exit=True,
             only_where_setup_sets="train.neuroflux.head.pool_to"),
    # Only where the setup narrows its heads (ResNet on Fashion-MNIST): the chosen exit's size is the point.
    Ablation("head_width", "heads up to 64 filters", "heads up to 32 filters", ("train.neuroflux.head.filters=64",),
             selects_exit=True, only_where_setup_sets="train.neuroflux.head.filters"),
    Ablation("batch", "one global batch", "per-block batch sizes", global_batch=True),
    Ablation("cache", "recompute earlier blocks", "activation cache", ("train.neuroflux.cache.placement=recompute",)),
    # On by default since three seeds of both setups shipped the same exit in 0.39-0.75x of the run (schema).
    Ablation("early_stop", "early stop off", "early stop on", ("train.neuroflux.stop_stalled_blocks=false",),
             selects_exit=True),
    # The global-batch ablation's deeper blocks learned more per epoch at a smaller batch: is it the
    # number of steps (the cap) or a learning rate too low for large batches (NeuroFlux's own rate)?
    Ablation("batch_cap", "block batch capped at 32", "each block's largest batch (up to the setup's cap)",
             ("train.neuroflux.max_batch_size=32",), only_where_cap_above=32),
    Ablation("batch_policy", "batch at each block's noise scale", "the largest batch that fits (up to the cap)",
             ("train.neuroflux.batch_policy=noise_scale",), every_budget=True),
    # Only where the setup caps its block batches (the Fashion-MNIST setups, at 64 or 32).
    Ablation("batch_cap_128", "block batch up to 128", "block batch up to the setup's cap",
             ("train.neuroflux.max_batch_size=128",), every_budget=True,
             only_where_setup_sets="train.neuroflux.max_batch_size"),
    Ablation("lr", "backprop's learning rate (lr_scale 1)", "twice backprop's rate (lr_scale 2)",
             ("train.neuroflux.lr_scale=1",)),
    Ablation("units_per_block", "blocks split by batch size only", "at most 2 units per block",
             ("train.neuroflux.max_units_per_block=null",), every_budget=True),
    Ablation("head_warm_start", "every head from random weights", "heads warm-started from the previous block's",
             ("train.neuroflux.head.warm_start=false",), every_budget=True),
    # Only where the setup shortens its first blocks (ResNet on Fashion-MNIST).
    Ablation("block_epochs", "every block train.epochs", "the setup's first blocks fewer epochs",
             ("train.neuroflux.block_epochs=[]",), every_budget=True,
             only_where_setup_sets="train.neuroflux.block_epochs"),
    # Only where the setup ships slim heads (both Fashion-MNIST setups): the chosen exit, and what training them costs,
    # are the point.
    Ablation("slim_heads", "exits ship the heads their units learned from", "slim heads where they do as well",
             ("train.neuroflux.slim_heads.share=null",), selects_exit=True, every_budget=True,
             only_where_setup_sets="train.neuroflux.slim_heads.share"),
    # Does a head epoch after every block still pay once the exits ship slim heads? (VGG's setup took one before.)
    Ablation("head_epochs", "a head epoch after every block", "no head epochs",
             ("train.neuroflux.head_epochs=1",), selects_exit=True,
             only_where_setup_sets="train.neuroflux.slim_heads.share"),
    # Only where the setup trains its slim heads longer than the default (ResNet on Fashion-MNIST, whose slim heads
    # kept improving on its frozen early units to 40 epochs: benchmarks/config.py).
    Ablation("slim_head_epochs", "slim heads 10 epochs", "the setup's slim-head epochs",
             ("train.neuroflux.slim_heads.epochs=10",), selects_exit=True,
             only_where_setup_sets="train.neuroflux.slim_heads.epochs"),
    # Only where the setup trains its slim heads at a larger batch than the default (ResNet on Fashion-MNIST, at 128:
    # a slim step's cost is mostly its fixed overhead; benchmarks/config.py).
    Ablation("slim_head_batch", "slim heads at batch 64", "the setup's slim-head batch",
             ("train.neuroflux.slim_heads.batch_size=64",), selects_exit=True,
             only_where_setup_sets="train.neuroflux.slim_heads.batch_size"),
)


def run(bench: Workbench) -> dict[str, Any]:
    config = bench.config
    budget = config.ablation_budget
    setups = []
    for setup in config.setups:
        ablations = [a for a in ABLATIONS if _applies(a, setup, config)]
        contenders = {DEFAULT: RunSpec(setup, budget)}
        contenders.update({a.variant: RunSpec(setup, budget, a.overrides, global_batch=a.global_batch)
                           for a in ablations})
        runs = bench.interleaved(contenders)
        chosen = _chosen_exits(bench, setup.name, runs, [a.variant for a in ablations if a.selects_exit])
        variants = {label: _variant(group, chosen.get(label)) for label, group in runs.items()}
        pairs = [_pair(a, runs[DEFAULT], runs[a.variant], config.target_cap, config.target_step) for a in ablations]
        other_budgets = [_at_budget(bench, setup, label, a) for a in ablations if a.every_budget
                         for label in config.budget_labels() if label != budget]
        setups.append({"setup": setup.name, "budget": budget, "variants": variants, "pairs": pairs,
                       "other_budgets": other_budgets})
    return {"setups": setups}


def _at_budget(bench: Workbench, setup, budget: str, ablation: Ablation) -> dict[str, Any]:
    """The default and one variant, interleaved, at another budget than the ablation table's."""
    runs = bench.interleaved({DEFAULT: RunSpec(setup, budget),
                              ablation.variant: RunSpec(setup, budget, ablation.overrides)})
    config = bench.config
    return {"budget": budget, "ablation": ablation.name,
            "variants": {label: _variant(group, None) for label, group in runs.items()},
            "pair": _pair(ablation, runs[DEFAULT], runs[ablation.variant], config.target_cap, config.target_step)}


def _applies(ablation: Ablation, setup: Setup, config: SuiteConfig) -> bool:
    field = ablation.only_where_setup_sets
    if field is not None and not any(o.startswith(f"{field}=") for o in setup.overrides):
        return False
    cap = ablation.only_where_cap_above
    return cap is None or setup_recipe(config, setup).train.neuroflux.max_batch_size > cap


def _chosen_exits(bench: Workbench, setup: str, runs: dict[str, list[TrainedRun]],
                  labels: list[str]) -> dict[str, list[dict[str, Any]]]:
    chosen: dict[str, list[dict[str, Any]]] = {}
    for index, label in enumerate([DEFAULT, *labels]):
        for repeat, run in enumerate(runs[label]):
            if run.net is None:
                continue
            folder = bench.scratch / f"ablation-{setup}-{index}-{repeat}"
            scores, selection = bench.select(run, folder)
            exit_ = scores.get(selection.chosen)
            # Chosen on the validation split, reported on the test split.
            chosen.setdefault(label, []).append({"name": exit_.name, "accuracy": exit_.test_accuracy,
                                                 "val_accuracy": exit_.accuracy, "params": exit_.params})
    return chosen


def _variant(group: list[TrainedRun], chosen: list[dict[str, Any]] | None) -> dict[str, Any]:
    summary = contender_summary([r.record for r in group], None)
    plan = next((r.plan for r in group if r.plan is not None), None)
    if plan is not None:
        summary["head_filters"] = [u.head_filters for u in plan.units]
        summary["head_params"] = sum(u.head_params for u in plan.units)
        summary["cache_placements"] = [b.cache_placement for b in plan.blocks]
    summary["blocks_trained"] = spread_dict([r.record.blocks_trained for r in group if r.record.fits])
    summary["chosen_exits"] = chosen
    return summary


def _pair(ablation: Ablation, default: list[TrainedRun], variant: list[TrainedRun], cap: float,
          step: float) -> dict[str, Any]:
    default, variant = [r.record for r in default], [r.record for r in variant]
    target = target_for([*default, *variant], cap=cap, step=step)
    return {
        "name": ablation.name, "variant": ablation.variant, "default_side": ablation.default_side, "target": target,
        # variant / default, paired within each repeat: above 1 means the design choice saves time.
        "time_to_target_ratio": paired_ratios(times_to_target(variant, target), times_to_target(default, target)),
        "wall_ratio": paired_ratios(fitting(variant, "wall_seconds"), fitting(default, "wall_seconds")),
        "cpu_ratio": paired_ratios(fitting(variant, "cpu_seconds"), fitting(default, "cpu_seconds")),
    }


def render(result: dict[str, Any]) -> str:
    out = ["Every variant changes one thing against the default; ratios are variant / default, paired within "
           "each repeat, so above 1 means the default's design choice saves that much time. The time-to-target "
           "ratio uses the pair's common target (the rule of comparison 1).\n"]
    for entry in result["setups"]:
        variants = entry["variants"]
        rows = []
        for label in [DEFAULT, *(a.variant for a in ABLATIONS if a.variant in variants)]:
            v = variants[label]
            if not v["fits"]:
                rows.append([label, "does not fit: " + v["note"]] + [None] * 7)
                continue
            exits = v.get("chosen_exits")
            rows.append([label, batches(v["batch_sizes"]),
                         peak_of_budget(v["measured_peak_bytes"], v["budget_bytes"]),
                         f"{count(v.get('head_params'))} ({batches(v.get('head_filters'))} filters)",
                         spread(v["blocks_trained"], 1), spread(v["best_val_accuracy"], 3),
                         spread(v["wall_seconds"], 1, " s"), spread(v["cpu_seconds"], 1, " s"),
                         " / ".join(f"{e['name']} ({e['accuracy']:.1%}, {count(e['params'])})" for e in exits)
                         if exits else None])
        budget = next((v["budget_bytes"] for v in variants.values() if v["fits"]), None)
        out.append(f"**{entry['setup']}** at the {entry['budget']} budget ({mib(budget)})\n")
        out.append(table(["contender", "batch sizes", "measured peak (of budget)", "head parameters as planned",
                          "blocks trained",
                          "best val accuracy", "wall time", "CPU time",
                          "chosen exit (test accuracy, parameters)"], rows))
        pair_rows = [[f"{p['default_side']} vs {p['variant']}",
                      None if p["target"] is None else f"{p['target']:.1%}",
                      spread(p["time_to_target_ratio"], 2, "x"), spread(p["wall_ratio"], 2, "x"),
                      spread(p["cpu_ratio"], 2, "x")] for p in entry["pairs"]]
        out.append("\n" + table(["ablation", "target", "time to target, variant/default", "whole run wall, "
                                 "variant/default", "CPU, variant/default"], pair_rows))
        if entry.get("other_budgets"):
            out.append(_render_other_budgets(entry["setup"], entry["other_budgets"]))
    return "\n".join(out)


def _render_other_budgets(setup: str, entries: list[dict[str, Any]]) -> str:
    rows = []
    for entry in entries:
        pair = entry["pair"]
        for label, v in entry["variants"].items():
            if not v["fits"]:
                rows.append([entry["budget"], label, "does not fit: " + v["note"]] + [None] * 5)
                continue
            ratios = label != DEFAULT
            rows.append([entry["budget"], label, batches(v["batch_sizes"]), spread(v["blocks_trained"], 1),
                         spread(v["best_val_accuracy"], 3), spread(v["wall_seconds"], 1, " s"),
                         None if pair["target"] is None else f"{pair['target']:.1%}",
                         spread(pair["time_to_target_ratio"], 2, "x") if ratios else "1 (reference)"])
    variants = list(dict.fromkeys(entry["pair"]["variant"] for entry in entries))
    return (f"\n**{setup}**, the same ablation at the other budgets ({'; '.join(variants)}: each against "
            "the default, interleaved in pairs)\n\n"
            + table(["budget", "contender", "batch sizes", "blocks trained", "best val accuracy", "wall time",
                     "target", "time to target, variant/default"], rows))


register_comparison(Comparison(
    name="ablations", selects_exits=True, title="Ablations: every design choice against the default",
    question="Does each NeuroFlux design choice (adaptive heads, their capacity and width, per-block batch "
             "sizes and how large, the activation cache, early stop of deeper blocks, at most two units per "
             "block, warm-started heads, fewer epochs for the first blocks, slim heads, head epochs, slim-head "
             "epochs and batch) pay for itself?",
    run=run, render=render))
