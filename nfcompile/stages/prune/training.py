"""Training with masks: one learning-rate schedule per run, masks enforced after every step.

Every method trains through `train_masked`, and epoch e of any run sees the same batches in the
same order (the order is derived from the seed and e alone), so methods differ only in what they
prune and when.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nfcompile.core.repro import derived_seed
from nfcompile.core.training import lr_factor, make_optimizer, scaled_lr, set_lr
from nfcompile.data.batches import image_batches
from nfcompile.data.datasets import DataBundle
from nfcompile.recipe.schema import TrainSection
from nfcompile.stages.prune.masks import Masks, apply_masks, prunable_weights


def batch_size_for(train: TrainSection, data: DataBundle) -> int:
    return min(train.batch_size or train.reference_batch_size, len(data.train))


def epoch_batches(data: DataBundle, train: TrainSection, *, device: torch.device, seed: int, epoch: int):
    """The shuffled training batches of epoch ``epoch``: the same for every method and round."""
    generator = torch.Generator().manual_seed(derived_seed(seed, "prune-epoch", epoch))
    return image_batches(data.train, batch_size_for(train, data), data.preprocessing, device=device,
                         shuffle=True, generator=generator)


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
    steps_per_epoch = math.ceil(len(data.train) / batch_size)
    total_steps = total_epochs * steps_per_epoch
    base_lr = scaled_lr(train, batch_size)
    model.to(device).train()
    optimizer = make_optimizer(model.parameters(), train, batch_size)
    if masks is not None:
        apply_masks(weights, masks)
    for epoch in epochs:
        if before_epoch is not None:
            new_masks = before_epoch(epoch)
            if new_masks is not None:
                masks = new_masks
                apply_masks(weights, masks)
            model.train()
        for step, (x, y) in enumerate(epoch_batches(data, train, device=device, seed=seed, epoch=epoch)):
            set_lr(optimizer, base_lr * lr_factor(epoch * steps_per_epoch + step, total_steps, 0, train.schedule))
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if masks is not None:
                apply_masks(weights, masks)
    return masks
