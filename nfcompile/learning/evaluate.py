"""Top-1 accuracy: the one evaluation loop, over any input source and any number of exits.

A source is what the trainers read batches from (`data.sources`: images, an activation cache, or
finished units recomputed): ``len(source)`` samples and ``source.fetch(indices, None, train=False)``.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
from torch import nn


EVAL_BATCH_SIZE = 256

Forward = Callable[[torch.Tensor], Sequence[torch.Tensor]]


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Eval mode inside, every module's own mode back afterwards."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def _batch_hits(forward: Forward, source, batch_size: int) -> Iterator[list[torch.Tensor]]:
    """Per batch of ``source``, in order: for each of ``forward``'s outputs, which samples its top-1
    class gets right (bool)."""
    if len(source) == 0:
        raise ValueError("no samples to evaluate on")
    for start in range(0, len(source), batch_size):
        # One batch's indices at a time: views of one arange over the split held all of it throughout.
        indices = torch.arange(start, min(start + batch_size, len(source)))
        x, y = source.fetch(indices, None, train=False)
        hits = [logits.argmax(dim=1) == y for logits in forward(x)]
        # Released before the next fetch, as training does (the logits went with the comprehension):
        # held through it, this batch's input raised a recomputed input's evaluation over the plan's
        # peak (ResNet-18, Fashion-MNIST, cache.placement recompute: block 3 measured 2.5% over its budget).
        del x, y
        yield hits
        del hits  # nor are the hits held through the next fetch: the caller drops its own reference too


@torch.no_grad()
def top1_accuracies(forward: Forward, source, batch_size: int = EVAL_BATCH_SIZE) -> list[float]:
    """Share of ``source`` each of ``forward``'s outputs classifies correctly; ``forward(x)`` returns
    the logits of every exit it evaluates, always in the same order. The caller sets the modes.
    Only counts are kept between batches (training evaluates under its budget)."""
    correct: list[int] = []
    for hits in _batch_hits(forward, source, batch_size):
        counts = [int(h.sum()) for h in hits]
        del hits
        correct = [c + h for c, h in zip(correct, counts)] if correct else counts
    return [c / len(source) for c in correct]


@torch.no_grad()
def top1_hits(forward: Forward, source, batch_size: int = EVAL_BATCH_SIZE) -> torch.Tensor:
    """Which samples of ``source`` each of ``forward``'s outputs classifies correctly: bool, one row
    per output (what paired comparisons of exits need). The caller sets the modes."""
    rows = []
    for hits in _batch_hits(forward, source, batch_size):
        rows.append(torch.stack(hits).cpu())
        del hits
    return torch.cat(rows, dim=1)


def top1_accuracy(model: nn.Module, source, batch_size: int = EVAL_BATCH_SIZE) -> float:
    """One model's accuracy on ``source``, in eval mode; the model keeps its mode."""
    with eval_mode(model):
        return top1_accuracies(lambda x: (model(x),), source, batch_size)[0]
