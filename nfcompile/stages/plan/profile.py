"""The profiler: measure (never compute) the peak memory of real training steps.

For each unit with its auxiliary head, one local training step (forward, local loss, backward,
optimizer step) runs on copies of the modules at several batch sizes, and the measured peaks are
fitted with mem(b) = P + b*A. The whole network is profiled the same way for the backprop
baselines. Copies keep the real model's weights untouched.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Callable

import torch
from torch import nn

from nfcompile.core.memory import MemoryFit, PeakMeter, fit_memory
from nfcompile.learning import backprop_step, local_step, make_optimizer, top1_accuracies
from nfcompile.recipe.schema import TrainSection

# One measured step per batch size, a steady-state one: the optimizer's state (momentum buffers,
# Adam's moments) is created beforehand by a step on zero gradients (`_create_optimizer_state`), as
# it exists in every training step after the first. Measuring the first step too doubled the
# profiler's time: on every unit of the quickstart model, with SGD and Adam at batch 4 and 64, the
# steady step's peak was the larger one and equal to this one to the byte.
STEPS_PER_MEASUREMENT = 1
# The profiler measures again at the batch its fit predicts for the budget, until that batch is
# within this factor of one it measured (or it has refined this many times): `next_measurement`.
EXTRAPOLATION_LIMIT = 1.25
MAX_REFINEMENTS = 4
MAX_STEP_UP = 4

StepFn = Callable[[list[nn.Module], torch.Tensor, torch.Tensor, torch.optim.Optimizer], object]


def _input_for(shape: tuple[int, ...], batch: int, device: torch.device, num_classes: int):
    x = torch.randn((batch, *shape), device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    return x, y


def _create_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Every parameter's optimizer state, made by one step on zero gradients (on the profiler's
    throw-away copies: weight decay still moves them, which changes nothing measured)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _profile(modules: list[nn.Module], step: StepFn, in_shape: tuple[int, ...], num_classes: int, *,
             batch_sizes: tuple[int, ...], budget: int, max_batch: int, section: TrainSection,
             device: torch.device) -> MemoryFit:
    measured: dict[int, int] = {}
    seconds: dict[int, float] = {}
    persistent = 0
    # One set of copies serves every batch size: a step moves the weights and BatchNorm's statistics,
    # never what a step at a given batch allocates, so a fresh copy per measurement only cost time.
    copies = [copy.deepcopy(m).to(device).train() for m in modules]

    def measure(batch: int) -> None:
        nonlocal persistent
        optimizer = make_optimizer([p for m in copies for p in m.parameters()], section, batch)
        _create_optimizer_state(optimizer)
        meter = PeakMeter(device, copies, [optimizer])
        for _ in range(STEPS_PER_MEASUREMENT):
            with meter.step():
                _synchronize(device)
                started = time.perf_counter()
                # The batch is created inside the measured region: it counts against the budget.
                x, y = _input_for(in_shape, batch, device, num_classes)
                step(copies, x, y, optimizer)
                del x, y
                _synchronize(device)
                seconds[batch] = time.perf_counter() - started
        measured[batch] = meter.reading.total
        persistent = max(persistent, meter.reading.persistent)

    for batch in sorted({min(b, max_batch) for b in batch_sizes}):
        measure(batch)
    if len(measured) < 2:  # max_batch collapsed the requested sizes
        measure(max(1, max(measured) // 2) if max(measured) > 1 else 2)
    for _ in range(MAX_REFINEMENTS):
        batch = next_measurement(measured, budget, max_batch)
        if batch is None:
            break
        measure(batch)
    # Time per sample from the measured step at the largest batch, the closest to how training runs.
    # It is that batch's first step, under the CPU memory tracker: on the quickstart's units 10-50%
    # slower than a warm untracked step. A separate untracked step per unit was 15% of the plan stage,
    # for a figure nothing decides on (plan.json records it).
    largest = max(measured)
    return fit_memory(list(measured.items()), persistent, seconds[largest] / largest)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def next_measurement(measured: dict[int, int], budget: int, max_batch: int) -> int | None:
    """The batch the profiler measures next, or None once the fit's largest batch under ``budget`` is
    backed by a measurement: that batch itself, or one that fit the budget at most
    EXTRAPOLATION_LIMIT below it (beyond the largest batch measured that is a short extrapolation;
    below it, an interpolation between two measurements, one each side)."""
    target = fit_memory(list(measured.items())).max_batch(budget, max_batch)
    if target == 0 or target in measured:
        return None
    below = max((b for b in measured if b < target), default=None)
    if below is not None and measured[below] <= budget and target <= below * EXTRAPOLATION_LIMIT:
        return None
    # At most MAX_STEP_UP times beyond what was measured: a line through the flat optimizer regime
    # can point far past the budget, and a measurement there costs time without adding information.
    return min(target, max(measured) * MAX_STEP_UP)


def profile_local_step(unit: nn.Module, head: nn.Module, in_shape: tuple[int, ...], num_classes: int, *,
                       batch_sizes: tuple[int, ...], budget: int, max_batch: int, section: TrainSection,
                       device: torch.device) -> MemoryFit:
    """One unit + its head, trained with its local loss (what a NeuroFlux block runs per unit)."""
    return _profile([unit, head], lambda m, x, y, opt: local_step(m[0], m[1], x, y, opt), in_shape,
                    num_classes, batch_sizes=batch_sizes, budget=budget, max_batch=max_batch,
                    section=section, device=device)


def measure_block_step(units: list[nn.Module], heads: list[nn.Module], in_shape: tuple[int, ...], num_classes: int,
                       batch: int, *, section: TrainSection, device: torch.device) -> int:
    """The measured peak of a whole block's training step at ``batch``: every unit's local step in turn
    on the block's input batch, with the block's weights and optimizer state resident (copies). The
    per-unit fits predict it; this checks the batch a plan chose, where a kernel's scratch memory or the
    block's input batch (alive across its units' steps) can add to what the fits see."""
    units = [copy.deepcopy(u).to(device).train() for u in units]
    heads = [copy.deepcopy(h).to(device).train() for h in heads]
    optimizers = [make_optimizer([*u.parameters(), *h.parameters()], section, batch) for u, h in zip(units, heads)]
    for optimizer in optimizers:
        _create_optimizer_state(optimizer)
    meter = PeakMeter(device, [*units, *heads], optimizers)
    for _ in range(STEPS_PER_MEASUREMENT):
        with meter.step():
            x, y = _input_for(in_shape, batch, device, num_classes)
            h = x
            for unit, head, optimizer in zip(units, heads, optimizers):
                h, _ = local_step(unit, head, h, y, optimizer)
            del x, y, h
    return meter.reading.total


def profile_backprop_step(model: nn.Module, in_shape: tuple[int, ...], num_classes: int, *,
                          batch_sizes: tuple[int, ...], budget: int, max_batch: int, section: TrainSection,
                          device: torch.device) -> MemoryFit:
    """The whole network trained end to end (plain, or checkpointed when ``model`` is)."""
    return _profile([model], lambda m, x, y, opt: backprop_step(m[0], x, y, opt), in_shape, num_classes,
                    batch_sizes=batch_sizes, budget=budget, max_batch=max_batch, section=section, device=device)


def measure_evaluation(modules: list[nn.Module], forward: Callable[[list[nn.Module], torch.Tensor], object],
                       source, batch: int, *, section: TrainSection, device: torch.device) -> int:
    """The measured peak of evaluating at ``batch`` in the middle of training: the trainers' own loop
    (`top1_accuracies`: fetching the batch, ``forward(modules, x)`` in eval mode without autograd,
    comparing with the labels) over ``source``, a stand-in of ``batch`` samples made by the caller
    outside the measurement (the plan counts an input cache by itself), on copies whose weights and
    optimizer state are resident as between training steps, so the reading compares with a step's."""
    copies = [copy.deepcopy(m).to(device).eval() for m in modules]
    optimizer = make_optimizer([p for m in copies for p in m.parameters()], section, batch)
    _create_optimizer_state(optimizer)
    meter = PeakMeter(device, copies, [optimizer])
    with meter.step():
        top1_accuracies(lambda x: forward(copies, x), source, batch)
    return meter.reading.total


def largest_evaluation_batch(measure: Callable[[int], int], *, allowed: int, floor: int, cap: int,
                             batch_sizes: tuple[int, ...], attempts: int = MAX_REFINEMENTS) -> int:
    """The largest batch in (floor, cap] that a line through measured evaluation peaks
    (``measure(batch)``) puts within ``allowed``, once a measurement there confirms it; else the largest
    measured to fit, or ``floor`` (the training batch, whose step holds more than its forward pass).
    The line starts through ``batch_sizes``; a predicted batch measured over ``allowed`` joins the
    measurements and the line is refitted through it."""
    if floor >= cap:
        return floor
    measured = {b: measure(b) for b in sorted({min(max(b, 1), cap) for b in (*batch_sizes, floor)})}
    for _ in range(attempts):
        target = fit_memory(list(measured.items())).max_batch(allowed, cap) if len(measured) > 1 else 0
        if target <= floor or (target in measured and measured[target] > allowed):
            break  # nothing larger predicted, or the refitted line stands where it stood
        if target not in measured:
            measured[target] = measure(target)
        if measured[target] <= allowed:
            return target
    return max([floor, *(b for b, peak in measured.items() if floor < b and peak <= allowed)])


def writing_pass_batch(pass_peak: Callable[[int], int], largest: int, budget: int,
                       batch_sizes: tuple[int, ...]) -> int:
    """The batch of a pass that writes a block's outputs into a cache (the caching pass, the slim heads'
    features pass): ``largest`` (the block's evaluation batch) where its peak there (``pass_peak``) fits
    ``budget``, else the largest below it that a line through measured peaks puts within it
    (`largest_evaluation_batch`'s search), else 1 (the plan refuses a block predicted over its budget). The
    evaluation batch is sized without the batch the pass writes: ResNet-18's plain heads, on the benchmarks'
    stringent budget, wrote 2.3 MiB of unpooled features a batch there, 12% past the budget."""
    if pass_peak(largest) <= budget:
        return largest
    return max(1, largest_evaluation_batch(pass_peak, allowed=budget, floor=0, cap=largest, batch_sizes=batch_sizes))


def profile_input_fetch(make_source: Callable[[int], object], batch_sizes: tuple[int, ...],
                        device: torch.device) -> int:
    """Bytes per sample that preparing a batch holds at its peak (index copies, conversion to float,
    augmentation, the batch itself), measured by calling the trainer's own `fetch` on a source of
    ``make_source(n)`` samples. It runs before a block's first unit; the budget covers it too."""
    measured = []
    for batch in sorted(set(batch_sizes)):
        source = make_source(batch)
        generator = torch.Generator().manual_seed(0)
        meter = PeakMeter(device, [], [])
        with meter.step():
            x, y = source.fetch(torch.arange(batch), generator, train=True)
            del x, y
        measured.append((batch, meter.reading.total))
    (b1, m1), (b2, m2) = measured[0], measured[-1]
    per_sample = (m2 - m1) / (b2 - b1) if b2 > b1 else m2 / b2
    return max(1, math.ceil(per_sample))
