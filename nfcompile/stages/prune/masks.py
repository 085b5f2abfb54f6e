"""Which weights can be pruned, global ranking into masks, the sparsity schedule, and measuring it.

Masks are plain boolean tensors (True: keep) applied into the weights themselves, so a pruned model
is an ordinary module: the zeros stay in its state_dict and in every exported graph, and nothing
has to be removed before export (no `torch.nn.utils.prune` reparametrization).
"""

from __future__ import annotations

import torch
from torch import nn

Masks = dict[str, torch.Tensor]  # prunable weight name -> bool tensor of its shape, True = kept


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Weights of every Conv2d and Linear (biases and BatchNorm are never pruned), by name.

    A module shared under two names (an exit sharing the trunk) appears once.
    """
    weights: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            weights[f"{name}.weight" if name else "weight"] = module.weight
    return weights


def exponential_schedule(sparsity: float, rounds: int) -> list[float]:
    """Sparsity after each round when every round removes the same share of what is left.

    Round r of R reaches ``1 - (1 - sparsity) ** (r / R)``; the last round reaches ``sparsity``.
    """
    if not 0.0 <= sparsity < 1.0 or rounds < 1:
        raise ValueError(f"needs 0 <= sparsity < 1 and rounds >= 1, got {sparsity}, {rounds}")
    return [1.0 - (1.0 - sparsity) ** (r / rounds) for r in range(1, rounds + 1)]


def global_masks(scores: dict[str, torch.Tensor], sparsity: float, previous: Masks | None = None) -> Masks:
    """Keep the highest-scoring weights across all layers so that ``sparsity`` of them are pruned.

    Weights pruned in ``previous`` stay pruned whatever their new score (masks only shrink).
    Exactly ``round(sparsity * total)`` weights end up pruned.
    """
    names = list(scores)
    flat = []
    for name in names:
        score = torch.nan_to_num(scores[name].detach().flatten().double(), nan=0.0,
                                 posinf=torch.finfo(torch.float64).max)
        if previous is not None:
            score = torch.where(previous[name].flatten().to(score.device), score, torch.full_like(score, -torch.inf))
        flat.append(score.cpu())
    everything = torch.cat(flat)
    keep = everything.numel() - round(sparsity * everything.numel())
    if previous is not None:
        alive = sum(int(previous[name].sum()) for name in names)
        if keep > alive:
            raise ValueError(f"sparsity {sparsity:.4f} is below the {1 - alive / everything.numel():.4f} "
                             "already pruned: masks only shrink")
    kept = torch.zeros(everything.numel(), dtype=torch.bool)
    # A stable sort breaks ties by position, so equal scores give the same mask on every run.
    kept[torch.sort(everything, descending=True, stable=True).indices[:keep]] = True
    masks: Masks = {}
    offset = 0
    for name in names:
        count = scores[name].numel()
        masks[name] = kept[offset:offset + count].view(scores[name].shape).to(scores[name].device)
        offset += count
    return masks


@torch.no_grad()
def apply_masks(weights: dict[str, nn.Parameter], masks: Masks) -> None:
    """Zero the pruned entries in place (after every optimizer step, and when a mask changes)."""
    for name, mask in masks.items():
        weights[name].mul_(mask.to(weights[name].dtype))


def full_masks(weights: dict[str, nn.Parameter]) -> Masks:
    return {name: torch.ones_like(w, dtype=torch.bool) for name, w in weights.items()}


@torch.no_grad()
def weight_sparsity(model: nn.Module) -> tuple[int, int]:
    """(zero entries, all entries) over the prunable weights, counted in the weights themselves."""
    weights = prunable_weights(model).values()
    return sum(int((w == 0).sum()) for w in weights), sum(w.numel() for w in weights)


@torch.no_grad()
def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Share of zeros in each prunable weight (global ranking prunes layers unevenly)."""
    return {name: float((w == 0).sum()) / w.numel() for name, w in prunable_weights(model).items()}
