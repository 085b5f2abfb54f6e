"""What an exit costs regardless of where it runs: parameters and multiply-accumulates."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(module: nn.Module) -> int:
    """Trainable and frozen parameters, each shared tensor counted once (buffers excluded)."""
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def count_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one sample through ``module``: convolutions and matrix products.

    torch's FlopCounterMode counts 2 FLOPs per multiply-accumulate for exactly these ops (conv,
    mm/addmm/bmm, attention); element-wise work (BatchNorm, ReLU, pooling) is not counted, as in
    the usual MAC figures. Runs in eval mode on the module's own device; the mode is restored.
    """
    was_training = module.training
    device = next(module.parameters()).device
    module.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            module(torch.zeros((1, *input_shape), device=device))
    finally:
        module.train(was_training)
    return int(counter.get_total_flops()) // 2
