"""neuroflux.slim_heads: the exits ship narrower heads than their units learned from.

A head teaches its unit while both learn, and the adaptive rule sizes it for that (as wide as the memory
allows). Once a block is done its units are frozen for good, and an exit needs less: a copy of each head
at a share of its filters (those whose BatchNorm scale is largest) trains on the block's frozen outputs.
Those outputs, pooled as the head pools them, are computed once and cached, so an epoch costs only the
small heads' steps. An exit ships the copy where its accuracy on the monitor split is at least the
head's, both measured on the same cached features.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from nfcompile.core.log import get_logger
from nfcompile.core.memory import memory_phase
from nfcompile.core.repro import derived_seed
from nfcompile.core.results import BlockPlan, Plan
from nfcompile.data.batches import batch_order
from nfcompile.data.sources import ActivationCache
from nfcompile.learning import eval_mode, fit, make_optimizer, set_lr, top1_accuracies, warmed_up_schedule
from nfcompile.learning.parallel import LocalSteps, global_batch, rank_generators, synced_evaluate
from nfcompile.models.heads import AuxHead, slim_head
from nfcompile.recipe.schema import TrainSection
from nfcompile.stages.plan.slim_phase import slim_batch, slim_filters, slimmed_positions

log = get_logger(__name__)


@dataclass
class SlimmedHeads:
    heads: list[nn.Module]  # per unit of the block: the head its exit ships
    accuracy: tuple[float, ...]  # per unit: the shipped head's accuracy on the monitor split
    slimmed: tuple[bool, ...]  # per unit: whether it ships the slim copy


class _FromPooled(nn.Module):
    """A head run on its input as already pooled (`AuxHead.from_pooled`): what trains on the cache."""

    def __init__(self, head: AuxHead):
        super().__init__()
        self.head = head

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head.from_pooled(pooled)


class _PooledFeatures:
    """A training source of every slimmed exit's cached input: ``fetch`` gives one tensor per exit."""

    def __init__(self, caches: list[ActivationCache], labels: torch.Tensor, device: torch.device):
        self.caches, self.labels, self.device = caches, labels, device

    def __len__(self) -> int:
        return len(self.labels)

    def fetch(self, indices: torch.Tensor, generator: torch.Generator | None, *, train: bool):
        return [cache.read(indices) for cache in self.caches], self.labels[indices].to(self.device)

    def close(self) -> None:
        for cache in self.caches:
            cache.close()


def slim_block_heads(block: BlockPlan, units: list[nn.Module], heads: list[nn.Module], train_in, val_in, *,
                     accuracy: Sequence[float], local: TrainSection, plan: Plan, device: torch.device, seed: int,
                     folder: Path, label: str) -> SlimmedHeads:
    """Slim copies of the block's heads, trained on its frozen units' pooled outputs; ``accuracy``: every
    exit's now. ``local``: the block's training section (NeuroFlux's learning rate)."""
    section = local.neuroflux.slim_heads
    profiles = [plan.units[u] for u in block.units]
    # The plan chose the heads' widths, and which exits get a slim copy and where its features go.
    slimmed = slimmed_positions(profiles, section.share)
    kept = SlimmedHeads(list(heads), tuple(accuracy), (False,) * len(heads))
    if not slimmed:
        return kept
    if block.slim_features_placement == "none":
        raise ValueError(f"block {block.index}: the plan was made without neuroflux.slim_heads; plan again with "
                         "the training section that trains")
    started = time.perf_counter()
    wide = [heads[i] for i in slimmed]
    slim = [slim_head(head, slim_filters(head.filters, section.share)).to(device) for head in wide]
    train_features = val_features = None
    try:
        with memory_phase("slim heads' features"):
            train_features = _pooled_features(units, slimmed, wide, train_in, block, local, device, folder, "train")
            val_features = _pooled_features(units, slimmed, wide, val_in, block, local, device, folder, "val")
        featured = time.perf_counter()
        batch = slim_batch(profiles, block.batch_size, section.share, section.batch_size, len(train_features))
        optimizers = [make_optimizer(head.parameters(), local, global_batch(batch)) for head in slim]
        # The local step itself, each slim head behind an identity "unit" (its input is the cached features).
        local_steps = LocalSteps([nn.Identity() for _ in slim], [_FromPooled(head) for head in slim], device)

        def step(features: list[torch.Tensor], y: torch.Tensor, lr: float) -> list[float]:
            losses = []
            for own_step, optimizer, x in zip(local_steps.steps, optimizers, features):
                set_lr(optimizer, lr)
                losses.append(own_step(x, y, optimizer)[1])
            return losses

        def evaluate(candidates: list[AuxHead]):
            def run() -> list[float]:
                with eval_mode(*candidates):
                    return top1_accuracies(lambda xs: [h.from_pooled(x) for h, x in zip(candidates, xs)],
                                           val_features, block.evaluation_batch)
            return synced_evaluate(run, candidates, val_features)

        generator = torch.Generator().manual_seed(derived_seed(seed, "slim heads", block.index))
        try:
            outcome = fit(step, train_features, batch_size=batch, epochs=range(section.epochs),
                          lr_at=warmed_up_schedule(local, samples=len(train_features), batch=batch,
                                                   lr_batch=global_batch(batch), epochs=section.epochs),
                          generator_for=rank_generators(lambda epoch: generator, seed, "slim heads", block.index),
                          train_modules=slim, label=f"{label}, slim heads", log_as=f"block{block.index}_slim",
                          exit_names=[f"exit_{block.units[i]:02d}" for i in slimmed])
        finally:
            local_steps.close()
        with memory_phase("evaluation"):
            before, after = evaluate(wide)(), evaluate(slim)()
    finally:
        for features in (train_features, val_features):
            if features is not None:
                features.close()
    ships, shipped_accuracy, is_slim = list(heads), list(accuracy), [False] * len(heads)
    for i, copy, old, new in zip(slimmed, slim, before, after):
        if new >= old:
            ships[i], shipped_accuracy[i], is_slim[i] = copy, new, True
    log.info("%s: slim heads (%s filters, batch %d) in %.1f s (features %.1f s, steps %.1f s), exits %s -> %s on "
             "the cached features; %d of %d ship the slim head", label,
             "/".join(f"{h.filters}->{s.filters}" for h, s in zip(wide, slim)), batch, time.perf_counter() - started,
             featured - started, outcome.time_spent["steps"], " ".join(f"{a:.4f}" for a in before),
             " ".join(f"{a:.4f}" for a in after), sum(is_slim), len(slimmed))
    return SlimmedHeads(ships, tuple(shipped_accuracy), tuple(is_slim))


@torch.no_grad()
def _pooled_features(units: list[nn.Module], slimmed: list[int], heads: list[AuxHead], source, block: BlockPlan,
                     local: TrainSection, device: torch.device, folder: Path, name: str) -> _PooledFeatures:
    """One pass of ``source`` through the frozen units (eval mode), each slimmed exit's input pooled as its
    head pools it, into a cache per exit (the activation cache's precision), where the plan put them. At the
    batch the plan gave the pass (the block's evaluation batch, lowered where the batch of features it
    writes would not fit beside it): the pass is an evaluation's forward without the heads' convs."""
    caches: list[ActivationCache | None] = [None] * len(slimmed)
    labels: list[torch.Tensor] = []
    start = 0
    try:
        with eval_mode(*units):
            for indices in batch_order(len(source), block.slim_features_batch, False, None):
                h, y = source.fetch(indices, None, train=False)
                labels.append(y.cpu())
                pooled = []
                for position, unit in enumerate(units):
                    h = unit(h)
                    if position in slimmed:
                        pooled.append(heads[slimmed.index(position)].pooled_input(h))
                for k, features in enumerate(pooled):
                    if caches[k] is None:
                        caches[k] = ActivationCache(block.slim_features_placement, len(source),
                                                    tuple(features.shape[1:]), local.neuroflux.cache.dtype,
                                                    device=device, folder=folder,
                                                    name=f"block{block.index}.slim{k}.{name}")
                    caches[k].write(start, features)
                start += len(indices)
        return _PooledFeatures([c for c in caches if c is not None], torch.cat(labels), device)
    except BaseException:
        for cache in caches:
            if cache is not None:
                cache.close()
        raise
