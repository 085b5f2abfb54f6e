"""The gradient noise scale of each unit's local loss: the batch size above which a larger batch
stops buying proportionally faster progress per step.

McCandlish et al., "An Empirical Model of Large-Batch Training" (2018): with the true gradient G
and per-sample gradient covariance Sigma, an SGD step at batch B makes progress as if the batch
were noise-free once B is well above B_noise = tr(Sigma) / |G|^2; below it, doubling the batch
nearly halves the steps needed. Training then needs about E_min * (1 + B / B_noise) samples, so
a batch far above B_noise spends samples, and on a device where time grows with samples (a CPU),
time, for nothing. Their simple estimator (appendix A) needs only the squared norms of gradients
at two batch sizes: here every big batch is split into micro-batches, so it costs one forward and
backward per sample of the big batches, at the micro-batch's memory.

Written here, not taken from a library: no maintained package offers it for a unit trained on a
local loss, and the estimator is a few lines of arithmetic over gradients torch already gives.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nfcompile.core import distributed as dist
from nfcompile.data.batches import batch_order


def noise_scales(units: Sequence[nn.Module], heads: Sequence[nn.Module], source, *, batch: int,
                 batches: int, micro_batches: int, generator: torch.Generator) -> list[float]:
    """B_simple of every unit's local loss (its head's cross-entropy on its own output), measured on
    ``batches`` training batches of ``batch`` samples, each split into ``micro_batches``; inf where the
    gradient's signal is lost in its noise (the estimate of |G|^2 is not positive). The units and heads
    are left exactly as they were: weights, BatchNorm statistics and gradients (none)."""
    if batch < 2 * micro_batches:
        raise ValueError(f"a batch of {batch} cannot be split into {micro_batches} micro-batches of two or more")
    modules = [*units, *heads]
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]
    modes = [m.training for m in modules]
    small = [0.0] * len(units)  # sum over big batches of the mean |g_micro|^2
    big = [0.0] * len(units)  # sum over big batches of |g_big|^2
    measured = 0
    try:
        for m in modules:
            m.train()  # the gradients training will take: BatchNorm on batch statistics
        for indices in batch_order(len(source), batch, True, generator)[:batches]:
            if len(indices) < batch:
                continue  # the last, short batch would mix two batch sizes into one estimate
            x, y = source.fetch(indices, generator, train=True)
            for j, (unit, head) in enumerate(zip(units, heads)):
                mean_square, big_square = _unit_gradients(unit, head, x, y, micro_batches)
                small[j] += mean_square
                big[j] += big_square
                with torch.no_grad():
                    x = unit(x)
            measured += 1
    finally:
        for m, state, mode in zip(modules, saved, modes):
            m.load_state_dict(state)
            m.train(mode)
            m.zero_grad(set_to_none=True)
    # Several processes: every rank measured its own shard; the sums over ranks give one estimate.
    totals = dist.all_reduce_sum([*small, *big, measured])
    count = totals[-1]
    if not count:
        raise ValueError(f"{len(source)} training samples hold no full batch of {batch}")
    micro = batch // micro_batches
    return [_b_simple(s / count, b / count, micro, micro * micro_batches)
            for s, b in zip(totals[:len(units)], totals[len(units):2 * len(units)])]


def _unit_gradients(unit: nn.Module, head: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    micro_batches: int) -> tuple[float, float]:
    """(mean over micro-batches of |g_micro|^2, |mean of the micro-batches' gradients|^2) for one
    unit and its head; one micro-batch's graph alive at a time."""
    params = [p for p in [*unit.parameters(), *head.parameters()] if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    size = x.shape[0] // micro_batches
    mean_square = 0.0
    for part in range(micro_batches):
        rows = slice(part * size, (part + 1) * size)
        loss = F.cross_entropy(head(unit(x[rows].detach())), y[rows])
        grads = torch.autograd.grad(loss, params)
        mean_square += sum(float(g.pow(2).sum()) for g in grads) / micro_batches
        for acc, g in zip(total, grads):
            acc.add_(g, alpha=1.0 / micro_batches)
    return mean_square, sum(float(t.pow(2).sum()) for t in total)


def _b_simple(small_square: float, big_square: float, small: int, big: int) -> float:
    """Unbiased |G|^2 and tr(Sigma) from squared gradient norms at batch sizes ``small`` < ``big``
    (McCandlish et al., appendix A.1), and their ratio."""
    signal = (big * big_square - small * small_square) / (big - small)
    noise = (small_square - big_square) / (1.0 / small - 1.0 / big)
    if signal <= 0:
        return math.inf
    return max(0.0, noise) / signal
