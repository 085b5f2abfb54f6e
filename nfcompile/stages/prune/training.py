"""Training with masks: one learning-rate schedule per run, masks enforced after every step.

Every method trains through `train_masked`, and epoch e of any run sees the same batches in the
same order (the order is derived from the seed and e alone), so methods differ only in what they
prune and when.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from nfcompile.core.repro import derived_seed
from nfcompile.data.sources import unaugmented
from nfcompile.learning import backprop_step, fit, lr_schedule, make_optimizer, set_lr
from nfcompile.data.datasets import DataBundle
from nfcompile.recipe.schema import TrainSection
from nfcompile.stages.prune.masks import Masks, apply_masks, prunable_weights


def batch_size_for(train: TrainSection, data: DataBundle) -> int:
    return min(train.batch_size or train.reference_batch_size, len(data.train))


def train_masked(model: nn.Module, masks: Masks | None, data: DataBundle, train: TrainSection, *,
                 device: torch.device, seed: int, epochs: range, total_epochs: int,
                 before_epoch: Callable[[int], Masks | None] | None = None) -> Masks | None:
    """Train every parameter of ``model`` for ``epochs`` (a window of a ``total_epochs`` schedule).

    The learning rate follows ``train.schedule`` over all ``total_epochs``, so a run that starts at
    epoch k (weight rewinding) continues the schedule from there. ``before_epoch(e)`` may return new
    masks (a pruning round); they are applied at once. After every optimizer step the current masks
    are applied again, so pruned weights stay exactly zero despite momentum and weight decay.
    Returns the masks in force at the end.
    """
    weights = prunable_weights(model)
    batch_size = batch_size_for(train, data)
    total_steps = total_epochs * math.ceil(len(data.train) / batch_size)
    model.to(device).train()
    optimizer = make_optimizer(model.parameters(), train, batch_size)
    current = [masks]
    if masks is not None:
        apply_masks(weights, masks)

    def step(x: torch.Tensor, y: torch.Tensor, lr: float) -> tuple[float]:
        set_lr(optimizer, lr)
        return (backprop_step(model, x, y, optimizer),)

    def next_round(epoch: int) -> None:
        new_masks = before_epoch(epoch) if before_epoch is not None else None
        if new_masks is not None:
            current[0] = new_masks
            apply_masks(weights, new_masks)

    def keep_masked() -> None:
        if current[0] is not None:
            apply_masks(weights, current[0])

    # Epoch e of any run sees the same batches in the same order: the order comes from the seed and e.
    fit(step, unaugmented(data.train, data.preprocessing, device), batch_size=batch_size, epochs=epochs,
        lr_at=lr_schedule(train, batch_size, total_steps),
        generator_for=lambda epoch: torch.Generator().manual_seed(derived_seed(seed, "prune-epoch", epoch)),
        train_modules=[model], before_epoch=next_round, after_step=keep_masked, label="masked training")
    return current[0]
