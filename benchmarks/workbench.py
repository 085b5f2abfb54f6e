"""The workbench every comparison measures on: recipes, data, budgets, plans and training runs.

Built once per run of the suite. Data and plans are made once and shared (the plan's memory
measurements do not depend on the training method or seed). Training runs are remembered too, so
a comparison that needs no timing (the deliverable, profiler fidelity) reuses the runs another
comparison made; a comparison that times its contenders asks for fresh runs and interleaves them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nfcompile.core.bytesize import format_bytes
from nfcompile.core.device import resolve_device
from nfcompile.core.log import get_logger
from nfcompile.core.repro import seed_everything
from nfcompile.core.results import ExitScores, Plan, Result, Selection, TrainResult
from nfcompile.data import DataBundle, load_data
from nfcompile.errors import BudgetError, BudgetExceeded
from nfcompile.models import MultiExitNet, UnitNet, build_unit_net
from nfcompile.recipe import Recipe, fingerprint, recipe_dict, with_overrides
from nfcompile.recipe.load import validate_recipe, without_fields
from nfcompile.stages.plan import PLANNING_SHARE, plan_training
from nfcompile.stages.score import score_exits
from nfcompile.stages.select import select_exit
from nfcompile.stages.plan.profile import profile_backprop_step
from nfcompile.stages.train import train_model

from benchmarks.config import Setup, SuiteConfig
from benchmarks.measures import Curve, accuracy_curve

log = get_logger("nfcompile.benchmarks")

# Training fields the planner does not read: contenders that differ only here share one plan. (The slim heads'
# share and batch are planned: their phase counts in a block's peak.)
NOT_PLANNED = {"method": True, "backprop": True, "epochs": True, "patience": True, "schedule": True,
               "batch_size": True, "gradient_filter": True,
               "neuroflux": {"stop_stalled_blocks": True, "stall_delta": True, "batch_policy": True,
                             "block_epochs": True, "head_epochs": True, "slim_heads": {"epochs": True}}}


@dataclass(frozen=True)
class RunSpec:
    """One training run: a setup under a budget, with a contender's overrides and a seed."""

    setup: Setup
    budget: str  # a label from the config's budget anchors
    overrides: tuple[str, ...] = ()
    seed: int = 0
    global_batch: bool = False  # every block trains at the plan's smallest block batch


@dataclass(frozen=True)
class RunRecord(Result):
    """What one training run measured, in the results file."""

    setup: str
    budget: str
    budget_bytes: int
    overrides: tuple[str, ...]
    global_batch: bool
    method: str  # neuroflux | backprop | backprop+checkpointing
    seed: int
    fits: bool  # False: the contender cannot train under this budget (note says why)
    note: str
    batch_sizes: tuple[int, ...]  # per block (one block for backprop)
    predicted_peak_bytes: tuple[int, ...]  # per block, from the plan
    measured_peak_bytes: tuple[int, ...]  # per block; 0 where a block was skipped
    wall_seconds: float  # the whole train_model call
    cpu_seconds: float  # CPU time of this process over the same call (steadier on a shared machine)
    curve: Curve  # (seconds, best validation accuracy so far) at the end of every epoch
    best_val_accuracy: float | None
    blocks: int
    blocks_trained: int
    load_average: float  # 1-minute load average as the run started: how busy the machine was
    # CPU: per block, the rise of the process's anonymous resident memory (the outside cross-check)
    rss_rise_bytes: tuple[int, ...] = ()
    time_spent: dict[str, float] = dataclasses.field(default_factory=dict)  # `TrainResult.time_spent()`
    evaluation_batch_sizes: tuple[int, ...] = ()  # per block, what it evaluated at after every epoch
    # per block, the gradient noise scale measured at its start (batch_policy noise_scale; else None)
    noise_scales: tuple[float | None, ...] = ()
    # per block, what held the most of its measured peak (the meter's largest category; "" where none is known)
    peak_held_by: tuple[str, ...] = ()


@dataclass
class TrainedRun:
    spec: RunSpec
    record: RunRecord
    plan: Plan | None
    net: MultiExitNet | None  # None where the contender did not fit
    result: TrainResult | None


def one_global_batch(plan: Plan) -> Plan:
    """The plan with every block at its smallest block's batch size (the per-block ablation). Evaluation
    batches stay as planned: within the budget, so the variant differs in its training batches only."""
    smallest = min(block.batch_size for block in plan.blocks)
    return dataclasses.replace(plan, blocks=tuple(dataclasses.replace(b, batch_size=smallest) for b in plan.blocks))


class Workbench:
    def __init__(self, config: SuiteConfig, scratch: Path):
        self.config = config
        self.scratch = Path(scratch)
        self.device = resolve_device(config.device)
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.runs: list[TrainedRun] = []
        self.plans_made: list[dict] = []  # every plan made, with how long its profiling took
        self.setups_used: dict[str, Setup] = {}  # every setup a recipe was made for, in order
        self._data: dict[str, DataBundle] = {}
        self._budgets: dict[str, dict[str, int]] = {}
        self._plans: dict[str, Plan | BudgetError] = {}

    # -- recipes and data ---------------------------------------------------------------------------

    def recipe(self, setup: Setup, budget: str | None = None, overrides: tuple[str, ...] = ()) -> Recipe:
        self.setups_used.setdefault(setup.name, setup)
        memory = () if budget is None else (f"budget.memory={self.budgets(setup)[budget]}",)
        return setup_recipe(self.config, setup, (*memory, *overrides))

    def data(self, recipe: Recipe) -> DataBundle:
        key = fingerprint({"data": recipe_dict(recipe)["data"], "seed": recipe.seed})
        if key not in self._data:
            self._data[key] = load_data(recipe.data, recipe.seed)
        return self._data[key]

    def num_classes(self, recipe: Recipe) -> int:
        return recipe.model.num_classes or self.data(recipe).info.num_classes

    def fresh_unit_net(self, recipe: Recipe, seed: int) -> UnitNet:
        seed_everything(seed)
        return build_unit_net(recipe.model, self.num_classes(recipe))

    def fresh_full_model(self, recipe: Recipe, seed: int) -> nn.Module:
        """The whole model (every unit, then its classifier) as one module, freshly initialized."""
        net = MultiExitNet.single_exit(self.fresh_unit_net(recipe, seed))
        return net.exit_net(net.exit_units[-1])

    # -- budgets and plans --------------------------------------------------------------------------

    def budgets(self, setup: Setup) -> dict[str, int]:
        """Each budget label's bytes: the peak plain backprop measures at its anchor batch size."""
        if setup.name not in self._budgets:
            recipe = self.recipe(setup)
            size = recipe.data.image_size
            anchors = dict(self.config.budget_anchors)
            batches = tuple(sorted(set(anchors.values())))
            # A budget no lower than the largest anchor's needs: the profiler measures exactly the anchors.
            fit = profile_backprop_step(self.fresh_unit_net(recipe, recipe.seed), (3, size, size),
                                        self.num_classes(recipe), batch_sizes=batches, budget=2**62,
                                        max_batch=max(batches), section=recipe.train, device=self.device)
            measured = dict(fit.measurements)
            # The planner sizes batches against PLANNING_SHARE of the budget: divide, so that backprop's
            # plan gets exactly the anchor batch.
            self._budgets[setup.name] = {label: math.ceil(measured[batch] / PLANNING_SHARE)
                                         for label, batch in anchors.items()}
            log.info("%s budgets: %s", setup.name, ", ".join(
                f"{label} {format_bytes(b)} (backprop at batch {anchors[label]})"
                for label, b in self._budgets[setup.name].items()))
        return self._budgets[setup.name]

    @property
    def measured_budgets(self) -> dict[str, dict[str, int]]:
        return dict(self._budgets)

    def plan(self, recipe: Recipe) -> Plan:
        """The plan for ``recipe`` (made once per planner-relevant settings); raises BudgetError
        when NeuroFlux cannot train at batch size 1 under the budget."""
        key = plan_key(recipe)
        if key not in self._plans:
            data = self.data(recipe)
            started = time.perf_counter()
            try:
                self._plans[key] = plan_training(
                    self.fresh_unit_net(recipe, recipe.seed), self.num_classes(recipe),
                    image_size=recipe.data.image_size, train_samples=len(data.train), val_samples=len(data.monitor),
                    budget=recipe.budget, train=recipe.train, augment=recipe.data.augment, device=self.device)
            except BudgetError as exc:
                self._plans[key] = exc
            self.plans_made.append(_plan_summary(recipe, self._plans[key], time.perf_counter() - started))
        plan = self._plans[key]
        if isinstance(plan, BudgetError):
            raise plan
        return plan

    # -- training -----------------------------------------------------------------------------------

    def train(self, spec: RunSpec, *, fresh: bool = False) -> TrainedRun:
        """Train the contender ``spec`` describes; an earlier identical run is reused unless ``fresh``
        (comparisons that time their contenders interleave fresh runs)."""
        if not fresh:
            for run in self.runs:
                if run.spec == spec:
                    return run
        recipe = self.recipe(spec.setup, spec.budget, spec.overrides)
        budget = self.budgets(spec.setup)[spec.budget]
        load = os.getloadavg()[0]
        try:
            plan = self.plan(recipe)
        except BudgetError as exc:
            return self._keep(TrainedRun(spec, _not_fitting(spec, recipe, budget, str(exc), load), None, None, None))
        if spec.global_batch:
            plan = one_global_batch(plan)
        out_dir = self.scratch / f"run-{len(self.runs):03d}"
        unit_net = self.fresh_unit_net(recipe, spec.seed)
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            outcome = train_model(unit_net, plan, self.data(recipe), model=recipe.model, train=recipe.train,
                                  augment=recipe.data.augment, budget=recipe.budget, device=self.device,
                                  seed=spec.seed, out_dir=out_dir, resume=False, fingerprint="benchmarks")
        except (BudgetError, BudgetExceeded) as exc:  # does not fit at all / went over the budget
            return self._keep(TrainedRun(spec, _not_fitting(spec, recipe, budget, str(exc), load), plan, None, None))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        result = outcome.result
        curve = accuracy_curve(result)
        record = RunRecord(
            setup=spec.setup.name, budget=spec.budget, budget_bytes=budget, overrides=spec.overrides,
            global_batch=spec.global_batch, method=result.method, seed=spec.seed, fits=True, note="",
            batch_sizes=tuple(b.batch_size for b in result.blocks),
            evaluation_batch_sizes=(tuple(b.evaluation_batch for b in plan.blocks) if result.method == "neuroflux"
                                    else (result.details.get("evaluation_batch_size", 0),)),
            predicted_peak_bytes=tuple(b.predicted_peak_bytes for b in result.blocks),
            measured_peak_bytes=tuple(b.measured_peak_bytes or 0 for b in result.blocks),
            rss_rise_bytes=tuple(b.rss_rise_bytes or 0 for b in result.blocks),
            wall_seconds=wall, cpu_seconds=cpu, curve=curve,
            best_val_accuracy=curve[-1][1] if curve else None, blocks=len(result.blocks),
            blocks_trained=sum(b.trained for b in result.blocks), load_average=load,
            time_spent=result.time_spent(), noise_scales=tuple(b.noise_scale for b in result.blocks),
            peak_held_by=tuple(max(b.peak_breakdown, key=b.peak_breakdown.get) if b.peak_breakdown else ""
                               for b in result.blocks))
        log.info("%s @ %s: %s seed %d%s: %.1f s wall, %.1f s CPU, best val accuracy %.4f, batch %s, load %.1f",
                 spec.setup.name, spec.budget, result.method, spec.seed, _describe(spec), wall, cpu,
                 record.best_val_accuracy or 0.0, list(record.batch_sizes), load)
        return self._keep(TrainedRun(spec, record, plan, outcome.net.eval(), result))

    def score(self, run: TrainedRun, folder: Path) -> ExitScores:
        """Score every trained exit of ``run`` as `nfcompile build` does: validation accuracy (what
        selection decides on), test accuracy (what is reported), size, ONNX Runtime latency; the ONNX
        files go to ``folder``."""
        recipe = self.recipe(run.spec.setup, run.spec.budget, run.spec.overrides)
        data = self.data(recipe)
        return score_exits(run.net, run.result.exit_units, data.val, data.preprocessing, bench=recipe.bench,
                           export=recipe.export, out_dir=folder, device=self.device, test=data.test)

    def select(self, run: TrainedRun, folder: Path) -> tuple[ExitScores, Selection]:
        """``run``'s exits scored, and the one the recipe's selection policy picks."""
        scores = self.score(run, folder)
        return scores, select_exit(scores, self.recipe(run.spec.setup).select)

    def interleaved(self, contenders: dict[str, RunSpec]) -> dict[str, list[TrainedRun]]:
        """Fresh runs of every contender, ``repeats`` times. A repeat gives all contenders the same seed
        (its own) and rotates their order, so a change in the machine's load falls on each alike."""
        labels = list(contenders)
        runs: dict[str, list[TrainedRun]] = {label: [] for label in labels}
        for repeat in range(self.config.repeats):
            shift = repeat % len(labels)
            for label in labels[shift:] + labels[:shift]:
                spec = dataclasses.replace(contenders[label], seed=self.config.seed + repeat)
                runs[label].append(self.train(spec, fresh=True))
        return runs

    def _keep(self, run: TrainedRun) -> TrainedRun:
        self.runs.append(run)
        return run


def setup_recipe(config: SuiteConfig, setup: Setup, overrides: tuple[str, ...] = ()) -> Recipe:
    """The suite's base recipe with the suite's overrides, then the setup's, then ``overrides``."""
    raw = copy.deepcopy(config.base_recipe)
    raw["device"] = config.device
    raw["seed"] = config.seed
    raw.setdefault("bench", {})["threads"] = config.threads
    recipe = validate_recipe(raw, source="benchmarks/config.py")
    return with_overrides(recipe, [*config.overrides, *setup.overrides, *overrides],
                          source=f"benchmarks setup {setup.name}")


def plan_key(recipe: Recipe) -> str:
    raw = recipe_dict(recipe)
    train = without_fields(raw["train"], NOT_PLANNED)
    return fingerprint({"model": raw["model"], "data": raw["data"], "budget": raw["budget"], "train": train,
                        "device": raw["device"], "seed": raw["seed"]})


def _plan_summary(recipe: Recipe, plan: Plan | BudgetError, seconds: float) -> dict:
    section = recipe.train.neuroflux
    summary = {"arch": recipe.model.arch, "budget_bytes": recipe.budget.memory_bytes, "seconds": seconds,
               "head_policy": section.head.policy, "cache_placement": section.cache.placement}
    if isinstance(plan, BudgetError):
        return {**summary, "fits": False, "note": str(plan)}
    return {**summary, "fits": True, "block_batch_sizes": [b.batch_size for b in plan.blocks],
            "block_evaluation_batch_sizes": [b.evaluation_batch for b in plan.blocks],
            "backprop_batch_size": plan.backprop_batch_size,
            "backprop_evaluation_batch_size": plan.backprop_evaluation_batch_size,
            "checkpointing_batch_size": plan.checkpointing_batch_size,
            "checkpointing_evaluation_batch_size": plan.checkpointing_evaluation_batch_size}


def _describe(spec: RunSpec) -> str:
    parts = [o for o in spec.overrides if not o.startswith("train.method=")]
    if spec.global_batch:
        parts.append("one global batch")
    return f" ({', '.join(parts)})" if parts else ""


def _not_fitting(spec: RunSpec, recipe: Recipe, budget: int, why: str, load: float) -> RunRecord:
    method = recipe.train.method + ("+checkpointing" if recipe.train.method == "backprop"
                                    and recipe.train.backprop.checkpointing else "")
    log.info("%s @ %s: %s does not fit: %s", spec.setup.name, spec.budget, method, why)
    return RunRecord(setup=spec.setup.name, budget=spec.budget, budget_bytes=budget, overrides=spec.overrides,
                     global_batch=spec.global_batch, method=method, seed=spec.seed, fits=False, note=why,
                     batch_sizes=(), predicted_peak_bytes=(), measured_peak_bytes=(), wall_seconds=0.0,
                     cpu_seconds=0.0, curve=(), best_val_accuracy=None, blocks=0, blocks_trained=0,
                     load_average=load)
