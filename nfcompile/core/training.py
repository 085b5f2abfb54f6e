"""Training primitives shared by the profiler (which measures them) and the trainers (which run them).

The profiler's prediction is only as good as its likeness to training, so both call the very same
step functions and optimizer factory.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nfcompile.data.batches import image_batches
from nfcompile.data.datasets import ImageSet
from nfcompile.data.preprocess import Preprocessing
from nfcompile.recipe.schema import TrainSection

EVAL_BATCH_SIZE = 256


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


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def local_step(unit: nn.Module, head: nn.Module, x: torch.Tensor, y: torch.Tensor,
               optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, float]:
    """One NeuroFlux step for one unit: forward on a detached input, local loss, backward at once,
    optimizer step. Only this unit's graph is ever alive. Returns the detached output for the next unit."""
    h = unit(x.detach())
    loss = F.cross_entropy(head(h), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return h.detach(), float(loss.detach())


def backprop_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer) -> float:
    """One end-to-end step: every activation of the network stays alive until backward."""
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


class CheckpointedUnits(nn.Module):
    """Units + classifier with gradient checkpointing at unit boundaries: only unit inputs are kept
    during the forward pass; each unit's activations are recomputed during backward."""

    def __init__(self, units: nn.ModuleList, classifier: nn.Module):
        super().__init__()
        self.units = units
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        for unit in self.units:
            x = checkpoint(unit, x, use_reentrant=False) if self.training and torch.is_grad_enabled() else unit(x)
        return self.classifier(x)


@torch.inference_mode()
def top1_accuracy(model: nn.Module, images: ImageSet, preprocessing: Preprocessing, *,
                  device: torch.device) -> float:
    """Share of ``images`` ``model`` classifies correctly, in eval mode; the model keeps its mode."""
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for x, y in image_batches(images, EVAL_BATCH_SIZE, preprocessing, device=device):
            correct += int((model(x).argmax(dim=1) == y).sum())
    finally:
        model.train(was_training)
    return correct / max(1, len(images))
