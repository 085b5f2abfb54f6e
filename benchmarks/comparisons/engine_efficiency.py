"""Engine efficiency: training FLOP/s of every NeuroFlux block against backprop's, under one budget.

On a CPU a larger batch saves only per-step overhead, so NeuroFlux's blocks must at least keep the
arithmetic rate backprop gets: each block's training step (every unit's local step at the block's
batch, heads included) and backprop's end-to-end step (at the largest batch the same budget allows)
are counted with torch's FlopCounterMode and timed back to back, alternating, on random inputs of
the right shapes. FLOP/s = counted FLOPs x steps / wall seconds (CPU seconds beside).

Beside it, the whole NeuroFlux training run at the same budget (the default contender, reused when
another comparison of the same suite run trained it), split by where its time went
(`TrainResult.time_spent`): what is not a training step is the run's overhead.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.markdown import batches, table
from benchmarks.registry import Comparison, register_comparison
from benchmarks.workbench import RunSpec, Workbench
from nfcompile.core.results import TIME_PHASES
from nfcompile.learning import backprop_step, local_step, make_optimizer
from nfcompile.models import MultiExitNet
from nfcompile.stages.train.neuroflux import attach_aux_heads

ROUNDS = 3  # timing rounds, alternating block and backprop
MIN_SECONDS = 1.0  # each timing lasts at least this long (and at least STEPS steps)
STEPS = 5


def _flops(step: Callable[[], None]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return int(counter.get_total_flops())


def _timed(step: Callable[[], None]) -> tuple[int, float, float]:
    steps, wall_start, cpu_start = 0, time.perf_counter(), time.process_time()
    while steps < STEPS or time.perf_counter() - wall_start < MIN_SECONDS:
        step()
        steps += 1
    return steps, time.perf_counter() - wall_start, time.process_time() - cpu_start


def _block_step(units, heads, optimizers, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        h = x
        for unit, head, optimizer in zip(units, heads, optimizers):
            h, _ = local_step(unit, head, h, y, optimizer)
    return step


def _measure(step: Callable[[], None]) -> dict[str, float]:
    step()  # warm-up: allocator, kernels
    return {"flops_per_step": _flops(step)}


def run(bench: Workbench) -> dict[str, Any]:
    config = bench.config
    setups = []
    for setup in config.setups:
        recipe = bench.recipe(setup, config.ablation_budget)
        plan = bench.plan(recipe)
        classes = bench.num_classes(recipe)
        net = attach_aux_heads(bench.fresh_unit_net(recipe, recipe.seed), plan, classes, recipe.seed).train()
        contenders: dict[str, tuple[Callable[[], None], int]] = {}
        for block in plan.blocks:
            units = [net.units[i] for i in block.units]
            heads = [net.heads[str(i)] for i in block.units]
            optimizers = [make_optimizer([*u.parameters(), *h.parameters()], recipe.train, block.batch_size)
                          for u, h in zip(units, heads)]
            x = torch.randn(block.batch_size, *plan.units[block.units[0]].in_shape)
            y = torch.randint(0, classes, (block.batch_size,))
            contenders[f"block {block.index}"] = (_block_step(units, heads, optimizers, x, y), block.batch_size)
        if plan.backprop_batch_size:
            full = MultiExitNet.single_exit(bench.fresh_unit_net(recipe, recipe.seed))
            model = full.exit_net(full.exit_units[-1]).train()
            optimizer = make_optimizer(model.parameters(), recipe.train, plan.backprop_batch_size)
            size = recipe.data.image_size
            x = torch.randn(plan.backprop_batch_size, 3, size, size)
            y = torch.randint(0, classes, (plan.backprop_batch_size,))
            contenders["backprop"] = (lambda m=model, o=optimizer, x=x, y=y: backprop_step(m, x, y, o),
                                      plan.backprop_batch_size)
        figures = {name: {"batch_size": batch, **_measure(step), "steps": 0, "wall_seconds": 0.0,
                          "cpu_seconds": 0.0} for name, (step, batch) in contenders.items()}
        names = list(contenders)
        for round_ in range(ROUNDS):
            for name in names if round_ % 2 == 0 else names[::-1]:
                steps, wall, cpu = _timed(contenders[name][0])
                figures[name]["steps"] += steps
                figures[name]["wall_seconds"] += wall
                figures[name]["cpu_seconds"] += cpu
        for f in figures.values():
            f["flops_per_second"] = f["flops_per_step"] * f["steps"] / f["wall_seconds"]
        backprop = figures.get("backprop")
        for name, f in figures.items():
            f["vs_backprop"] = (f["flops_per_second"] / backprop["flops_per_second"]
                                if backprop and name != "backprop" else None)
        whole = bench.train(RunSpec(setup, config.ablation_budget)).record
        setups.append({"setup": setup.name, "budget": config.ablation_budget,
                       "block_batches": [b.batch_size for b in plan.blocks], "contenders": figures,
                       "whole_run": {"wall_seconds": whole.wall_seconds, "time_spent": whole.time_spent,
                                     "load_average": whole.load_average}})
    return {"setups": setups}


def _order(item: tuple[str, Any]) -> tuple[int, int]:
    """Blocks by index, then backprop (the results file may hold them in any order)."""
    name = item[0]
    return (1, 0) if name == "backprop" else (0, int(name.split()[-1]))


def render(result: dict[str, Any]) -> str:
    out = ["FLOPs counted by torch's FlopCounterMode for one training step (forward, backward; the "
           "optimizer's arithmetic is not counted), timed in alternating rounds on random inputs. "
           "Goal: every block at least 0.9x backprop's FLOP/s.\n"]
    for entry in result["setups"]:
        rows = [[name, f["batch_size"], f"{f['flops_per_step'] / 1e9:.3f}", f"{f['flops_per_second'] / 1e9:.2f}",
                 None if f["vs_backprop"] is None else f"{f['vs_backprop']:.2f}x",
                 f"{f['cpu_seconds'] / f['wall_seconds']:.2f}"]
                for name, f in sorted(entry["contenders"].items(), key=_order)]
        out.append(f"**{entry['setup']}** at the {entry['budget']} budget (blocks at "
                   f"{batches(entry['block_batches'])})\n")
        out.append(table(["step", "batch", "GFLOP per step", "GFLOP/s", "vs backprop", "CPU/wall"], rows))
        out += _whole_run(entry.get("whole_run"))
    return "\n".join(out)


def _whole_run(whole: dict[str, Any] | None) -> list[str]:
    """Where the whole NeuroFlux run's time went, and its overhead: everything but the training steps."""
    if not whole or not whole.get("time_spent"):
        return []
    spent, total = whole["time_spent"], sum(whole["time_spent"].values())
    rows = [[TIME_PHASES.get(phase, phase), f"{seconds:.1f}", f"{seconds / total:.1%}"]
            for phase, seconds in sorted(spent.items(), key=lambda kv: -kv[1])]
    overhead = 1 - spent.get("steps", 0.0) / total
    return [f"\nThe whole NeuroFlux run at this budget ({total:.1f} s, load {whole['load_average']:.1f} as it "
            f"started): **{overhead:.1%} of it is not training steps** (the run's overhead).\n",
            table(["where the time went", "seconds", "share"], rows)]


register_comparison(Comparison(
    name="engine_efficiency", title="Engine efficiency: training FLOP/s per block vs backprop",
    question="Does every NeuroFlux block do its arithmetic at least as fast (FLOP/s) as backprop under the "
             "same budget?", run=run, render=render))
