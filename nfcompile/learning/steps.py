"""The training steps. The profiler measures these very functions, so its prediction holds for training."""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nfcompile.core.memory import memory_phase

# Momentum and moment buffers are made by the first step, with its scratch: filed under this name.
OPTIMIZER_PHASE = "optimizer step and state"


def local_step(unit: nn.Module, head: nn.Module, x: torch.Tensor, y: torch.Tensor,
               optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, float]:
    """One NeuroFlux step for one unit: forward on a detached input, local loss, backward at once,
    optimizer step. Only this unit's graph is ever alive. Returns the detached output for the next unit."""
    h = unit(x.detach())
    loss = F.cross_entropy(head(h), y)
    loss.backward()
    with memory_phase(OPTIMIZER_PHASE):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return h.detach(), float(loss.detach())


@contextlib.contextmanager
def frozen(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Inside, ``modules`` run as fixed functions: eval mode (BatchNorm on its running statistics) and no
    parameter requiring a gradient, so a forward through them keeps no graph, a `local_step` through one
    trains only its head, and DistributedDataParallel syncs only the head. Modes and flags come back after."""
    modes = [m.training for m in modules]
    flags = [[p.requires_grad for p in m.parameters()] for m in modules]
    for m in modules:
        m.eval()
        m.requires_grad_(False)
    try:
        yield
    finally:
        for m, mode, wanted in zip(modules, modes, flags):
            m.train(mode)
            for p, flag in zip(m.parameters(), wanted):
                p.requires_grad_(flag)


def backprop_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer) -> float:
    """One end-to-end step: every activation of the network stays alive until backward."""
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    with memory_phase(OPTIMIZER_PHASE):
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
