"""Optimizers and the learning-rate schedule: one factory and one schedule for every method."""

from __future__ import annotations

import math
from typing import Callable

import torch

from nfcompile.recipe.schema import TrainSection


def scaled_lr(section: TrainSection, batch_size: int) -> float:
    """Linear scaling rule: the recipe's lr is for `reference_batch_size`."""
    return section.lr * batch_size / section.reference_batch_size


def make_optimizer(params, section: TrainSection, batch_size: int) -> torch.optim.Optimizer:
    lr = scaled_lr(section, batch_size)
    params = [p for p in params if p.requires_grad]
    if section.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=section.momentum, weight_decay=section.weight_decay,
                               nesterov=section.momentum > 0)
    if section.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=section.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=section.weight_decay)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier on the base lr: linear warm-up (large scaled lrs need it), then cosine or constant."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= warmup_steps:
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def warmup_steps(steps_per_epoch: int, total_steps: int) -> int:
    """At most one epoch, a tenth of the run: what a block's freshly scaled lr needs."""
    return min(steps_per_epoch, max(1, total_steps // 10))


def lr_schedule(section: TrainSection, batch_size: int, total_steps: int, warmup: int = 0) -> Callable[[int], float]:
    """The learning rate at every global step of a run of ``total_steps``."""
    base = scaled_lr(section, batch_size)
    return lambda step: base * lr_factor(step, total_steps, warmup, section.schedule)


def warmed_up_schedule(section: TrainSection, *, samples: int, batch: int, lr_batch: int, epochs: int,
                       first_epoch: int = 0) -> Callable[[int], float]:
    """The learning rate at each of `fit`'s steps over ``epochs`` epochs of ``samples`` at ``batch``: a
    warm-up (`warmup_steps`), then the section's schedule, the rate scaled to ``lr_batch`` (the global
    batch). ``first_epoch``: the epoch `fit`'s window starts at (it counts steps from there), so a run
    numbered on after an earlier one still starts its own schedule at step 0."""
    steps_per_epoch = math.ceil(samples / batch)
    total_steps = epochs * steps_per_epoch
    schedule = lr_schedule(section, lr_batch, total_steps, warmup_steps(steps_per_epoch, total_steps))
    offset = first_epoch * steps_per_epoch
    return lambda step: schedule(step - offset)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
