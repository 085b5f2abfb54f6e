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
    ``batches`` training batches of ``batch`` samples, each split into ``micro_batches``; inf where it
    cannot be told from these batches (the estimate of |G|^2 or of tr(Sigma) is not positive). The
    units and heads are left as they were: weights and gradients untouched (the gradients are taken
    with `torch.autograd.grad`), BatchNorm statistics restored."""
    if batch < 2 * micro_batches:
        raise ValueError(f"a batch of {batch} cannot be split into {micro_batches} micro-batches of two or more")
    modules = [*units, *heads]
    # Only buffers change (BatchNorm's running statistics): a copy of them, not of the weights.
    saved = [[b.detach().clone() for b in m.buffers()] for m in modules]
    modes = [m.training for m in modules]
    micro_squares = [0.0] * len(units)  # sum over big batches of the mean |g_micro|^2
    big_squares = [0.0] * len(units)  # sum over big batches of |g_big|^2
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
                micro_squares[j] += mean_square
                big_squares[j] += big_square
                if j < len(units) - 1:
                    with torch.no_grad():
                        x = unit(x)
            del x, y  # before the next batch is fetched: one batch alive at a time
            measured += 1
    finally:
        with torch.no_grad():
            for m, buffers, mode in zip(modules, saved, modes):
                for buffer, value in zip(m.buffers(), buffers):
                    buffer.copy_(value)
                m.train(mode)
    # Several processes: every rank measured its own shard; the sums over ranks give one estimate.
    totals = dist.all_reduce_sum([*micro_squares, *big_squares, measured])
    count = totals[-1]
    if not count:
        raise ValueError(f"{len(source)} training samples hold no full batch of {batch}")
    micro = batch // micro_batches
    return [_b_simple(s / count, b / count, micro, micro * micro_batches)
            for s, b in zip(totals[:len(units)], totals[len(units):2 * len(units)])]


def _unit_gradients(unit: nn.Module, head: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    micro_batches: int) -> tuple[float, float]:
    """(mean over micro-batches of |g_micro|^2, |mean of the micro-batches' gradients|^2) for one
    unit and its head; one micro-batch's graph alive at a time. The running sum of the gradients is
    one copy of the unit's and head's parameters: no more than the momentum buffer training allocates
    next (SGD with momentum, Adam), which does not exist yet when this runs."""
    params = [p for p in [*unit.parameters(), *head.parameters()] if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    size = x.shape[0] // micro_batches
    mean_square = torch.zeros((), device=x.device, dtype=torch.float64)
    for part in range(micro_batches):
        rows = slice(part * size, (part + 1) * size)
        loss = F.cross_entropy(head(unit(x[rows].detach())), y[rows])
        grads = torch.autograd.grad(loss, params)
        mean_square += _squared_norm(grads) / micro_batches
        for acc, g in zip(total, grads):
            acc.add_(g, alpha=1.0 / micro_batches)
    return float(mean_square), float(_squared_norm(total))  # one device sync per unit and batch


def _squared_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """|g|^2 over all of ``tensors``, on their device, in float64: a norm reduces in place, where
    squaring first would allocate a copy of every tensor (the budget counts this probe)."""
    return sum(torch.linalg.vector_norm(t).double() ** 2 for t in tensors)


def _b_simple(micro_square: float, big_square: float, micro: int, big: int) -> float:
    """Unbiased |G|^2 and tr(Sigma) from mean squared gradient norms at batch sizes ``micro`` < ``big``
    (E|g_B|^2 = |G|^2 + tr(Sigma) / B; McCandlish et al., appendix A.1), and their ratio; inf where
    either estimate is not positive (too few batches to tell)."""
    signal = (big * big_square - micro * micro_square) / (big - micro)
    noise = (micro_square - big_square) / (1.0 / micro - 1.0 / big)
    if signal <= 0 or noise <= 0:
        return math.inf
    return noise / signal
