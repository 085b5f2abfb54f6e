"""neuroflux.slim_heads: the exits ship narrower heads than their units learned from.

A head teaches its unit while both learn, and the adaptive rule sizes it for that (as wide as the memory
allows). Once a block is done its units are frozen for good, and an exit needs less: a copy of each head
at a share of its filters (those whose BatchNorm scale is largest) trains on the block's frozen outputs.
Those outputs, pooled as the head pools them, are computed once and cached, so an epoch costs only the
small heads' steps. An exit ships the copy where its accuracy on the monitor split is at least the
head's, both measured on the same cached features.
"""

from __future__ import annotations

import math
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
from nfcompile.models.heads import FLOAT_BYTES, AuxHead, head_bytes_per_sample, slim_head
from nfcompile.recipe.schema import TrainSection
from nfcompile.stages.plan import CACHE_DTYPE_BYTES
from nfcompile.stages.plan.partition import host_cache_limit, place_cache

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
    slimmed = [i for i, head in enumerate(heads)
               if isinstance(head, AuxHead) and _slim_filters(head, section.share) < head.filters]
    kept = SlimmedHeads(list(heads), tuple(accuracy), (False,) * len(heads))
    if not slimmed:
        return kept
    started = time.perf_counter()
    wide = [heads[i] for i in slimmed]
    slim = [slim_head(head, _slim_filters(head, section.share)).to(device) for head in wide]
    sizes = _pooled_sizes(block, plan, slimmed, wide)
    placement = _placement(block, plan, sizes, len(train_in) + len(val_in), local, device)
    train_features = val_features = None
    try:
        with memory_phase("slim heads' features"):
            train_features = _pooled_features(units, slimmed, wide, train_in, block, local, device, folder,
                                              placement, "train")
            val_features = _pooled_features(units, slimmed, wide, val_in, block, local, device, folder,
                                            placement, "val")
        featured = time.perf_counter()
        batch = _slim_batch(block, plan, sizes, slim, section.batch_size, len(train_features))
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


def _slim_filters(head: AuxHead, share: float) -> int:
    return max(1, round(head.filters * share))


def _pooled_sizes(block: BlockPlan, plan: Plan, slimmed: list[int], heads: list[AuxHead]) -> list[tuple[int, int]]:
    """Per slimmed exit, its unit's output as its head pools it, per sample: (channels, elements per channel;
    kernel = stride, ceil mode: ceil(side / kernel) per side)."""
    sizes = []
    for position, head in zip(slimmed, heads):
        channels, *spatial = plan.units[block.units[position]].out_shape
        sizes.append((channels, math.prod(-(-side // head.pool_kernel) for side in spatial)))
    return sizes


def _placement(block: BlockPlan, plan: Plan, sizes: list[tuple[int, int]], samples: int, local: TrainSection,
               device: torch.device) -> str:
    """Where the features go: where `cache.placement` puts the activation cache, and with auto (or recompute,
    which has no cache to follow) on the device where they fit the headroom the block's training peak
    leaves, else host RAM (CUDA), else a memory-mapped file."""
    cache = local.neuroflux.cache
    sample_bytes = CACHE_DTYPE_BYTES[cache.dtype] * sum(channels * spatial for channels, spatial in sizes)
    requested = "auto" if cache.placement == "recompute" else cache.placement
    return place_cache(sample_bytes * samples, device_type=device.type, requested=requested,
                       device_headroom=max(0, plan.budget_bytes - block.predicted_peak_bytes),
                       host_limit=host_cache_limit(cache)).placement


def _slim_batch(block: BlockPlan, plan: Plan, sizes: list[tuple[int, int]], slim: list[AuxHead], wanted: int,
                samples: int) -> int:
    """``wanted``, where its steps fit in the activations the block's own step held at its batch (gone by
    now; at that batch they surely fit: a slim head's features and maps are no larger than its unit's and
    the wide head's). A batch reads every slim head's features (float32), and one head at a time keeps its
    maps for its backward (`head_bytes_per_sample`, on the pooled map), and their gradients during it.
    Early units' steps hold far more per sample than a slim head on pooled features, so their blocks' small
    batches do not hold the slim heads back; the block's meter measures what the steps really take."""
    per_sample = FLOAT_BYTES * sum(channels * spatial for channels, spatial in sizes) + max(
        2 * head.depth * head_bytes_per_sample(head.filters, spatial) for head, (_, spatial) in zip(slim, sizes))
    freed = block.batch_size * min(plan.units[u].bytes_per_sample for u in block.units)
    return max(1, min(wanted, samples, max(block.batch_size, freed // per_sample)))


@torch.no_grad()
def _pooled_features(units: list[nn.Module], slimmed: list[int], heads: list[AuxHead], source, block: BlockPlan,
                     local: TrainSection, device: torch.device, folder: Path, placement: str,
                     name: str) -> _PooledFeatures:
    """One pass of ``source`` through the frozen units (eval mode), each slimmed exit's input pooled as its
    head pools it, into a cache per exit (the activation cache's precision). At the block's evaluation batch:
    the pass is an evaluation's forward without the heads' convs."""
    caches: list[ActivationCache | None] = [None] * len(slimmed)
    labels: list[torch.Tensor] = []
    start = 0
    try:
        with eval_mode(*units):
            for indices in batch_order(len(source), block.evaluation_batch, False, None):
                h, y = source.fetch(indices, None, train=False)
                labels.append(y.cpu())
                pooled = []
                for position, unit in enumerate(units):
                    h = unit(h)
                    if position in slimmed:
                        pooled.append(heads[slimmed.index(position)].pooled_input(h))
                for k, features in enumerate(pooled):
                    if caches[k] is None:
                        caches[k] = ActivationCache(placement, len(source), tuple(features.shape[1:]),
                                                    local.neuroflux.cache.dtype, device=device, folder=folder,
                                                    name=f"block{block.index}.slim{k}.{name}")
                    caches[k].write(start, features)
                start += len(indices)
        return _PooledFeatures([c for c in caches if c is not None], torch.cat(labels), device)
    except BaseException:
        for cache in caches:
            if cache is not None:
                cache.close()
        raise
