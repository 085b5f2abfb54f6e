"""How each method ranks weights: the higher the score, the longer a weight survives.

- magnitude: |w| (iterative magnitude pruning, Han et al. 2015; Frankle & Carbin 2019);
- SNIP: |w * dL/dw|, connection sensitivity (Lee et al. 2019);
- SynFlow: |w * dR/dw| with R the summed output of the network made linear (absolute weights,
  all-ones input), no data at all (Tanaka et al. 2020);
- DRIVE (Saikumar & Varghese 2024): magnitude, connection sensitivity and a convergence term
  combined. The paper names these three terms; its exact formula was not available to us, so this
  is our own, documented definition:

      drive(w) = |w| / sum|w|  +  |w * g| / sum|w * g|  +  |g| / sum|g|

  with g the loss gradient averaged over several training batches and every sum taken over the
  weights still alive. Each term is normalized so that it carries the same total weight whatever
  its units. The convergence term |g| keeps weights that are still far from a stationary point
  (their loss keeps moving with them), which magnitude and connection sensitivity alone would
  drop when the weight happens to be small right now.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from nfcompile.stages.prune.masks import Masks, apply_masks, prunable_weights


def magnitude_scores(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: w.detach().abs() for name, w in prunable_weights(model).items()}


@contextlib.contextmanager
def _buffers_kept(model: nn.Module) -> Iterator[None]:
    """Scoring runs the model in train mode (batch statistics, as in training) without letting it
    move the BatchNorm running statistics."""
    saved = {name: buffer.clone() for name, buffer in model.named_buffers()}
    was_training = model.training
    try:
        yield
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(saved[name])


def mean_gradients(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Cross-entropy gradient of every prunable weight, averaged over ``batches``; model unchanged."""
    weights = prunable_weights(model)
    totals = {name: torch.zeros_like(w) for name, w in weights.items()}
    count = 0
    with _buffers_kept(model):
        model.train()
        for x, y in batches:
            grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(weights.values()),
                                        allow_unused=True)
            for name, grad in zip(weights, grads):
                if grad is not None:
                    totals[name] += grad
            count += 1
    if count == 0:
        raise ValueError("no batches to take gradients on")
    return {name: total / count for name, total in totals.items()}


def snip_scores(model: nn.Module, gradients: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: (w.detach() * gradients[name]).abs() for name, w in prunable_weights(model).items()}


def drive_scores(model: nn.Module, gradients: dict[str, torch.Tensor], masks: Masks) -> dict[str, torch.Tensor]:
    """The DRIVE score of the module doc; each term normalized over the weights still alive."""
    weights = {name: w.detach() for name, w in prunable_weights(model).items()}
    terms = [
        {name: w.abs() for name, w in weights.items()},
        {name: (w * gradients[name]).abs() for name, w in weights.items()},
        {name: gradients[name].abs() for name in weights},
    ]
    scores = {name: torch.zeros_like(w) for name, w in weights.items()}
    for term in terms:
        alive_total = sum(float((term[name] * masks[name]).sum()) for name in weights)
        for name in weights:
            scores[name] += term[name] / max(alive_total, torch.finfo(torch.float32).tiny)
    return scores


def linearized_copy(model: nn.Module) -> nn.Module:
    """SynFlow's network: a float64, eval-mode copy with every parameter and buffer made absolute.

    Eval mode makes BatchNorm a fixed (positive) affine map; float64 because the product of absolute
    weights through a deep network can overflow float32. ``model`` itself is untouched.
    """
    linear = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for tensor in [*linear.parameters(), *linear.buffers()]:
            if tensor.is_floating_point():
                tensor.abs_()
    for p in linear.parameters():
        p.requires_grad_(True)
    return linear


def synflow_scores(linear: nn.Module, masks: Masks, input_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """|w * dR/dw| on a `linearized_copy` with the pruned weights zeroed, R the summed output for
    one all-ones input (no data)."""
    weights = prunable_weights(linear)
    apply_masks(weights, masks)
    ones = torch.ones((1, *input_shape), dtype=torch.float64, device=next(linear.parameters()).device)
    grads = torch.autograd.grad(linear(ones).sum(), list(weights.values()), allow_unused=True)
    return {name: (w.detach() * (g if g is not None else torch.zeros_like(w))).abs()
            for (name, w), g in zip(weights.items(), grads)}
