"""Data-parallel training on the primitives every method shares: what a trainer calls so the same
code trains on one process or on several (a torchrun job, `core.distributed`).

On one process every function here hands back what it was given, unchanged: single-process
training is exactly what it was. On several:

- each rank trains on its shard of the training set (`shard`), takes the same number of steps, and
  its learning rate is scaled to the global batch (`global_batch`: world size x the per-rank batch);
- gradients are all-reduced by DistributedDataParallel (`data_parallel`, `LocalSteps`), BatchNorm
  statistics optionally over the global batch (`synced_batchnorm`);
- every rank draws its own augmentation and batch order, from (seed, rank, epoch) (`rank_generators`);
- validation is sharded too and its correct counts are summed over the ranks, so every rank sees the
  same accuracy and takes the same early-stop and best-epoch decisions (`synced_evaluate`).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from nfcompile.core import distributed as dist
from nfcompile.core.repro import derived_seed
from nfcompile.data.batches import shard_indices
from nfcompile.data.sources import ShardedInput
from nfcompile.learning.steps import local_step

# Set once per job from the recipe's `distributed` section (see `configure`).
_SETTINGS = {"sync_batchnorm": False}
# Which global training indices this rank actually fetched to train on (a record for the manifest).
_TRAINED: dict[int, torch.Tensor] = {}


def configure(*, sync_batchnorm: bool) -> None:
    _SETTINGS["sync_batchnorm"] = sync_batchnorm


def shard(source, *, train: bool):
    """This rank's shard of ``source``. Training shards are padded to one length (equal step counts,
    which DDP needs); validation shards are not (their counts are summed, every sample once)."""
    if dist.world_size() == 1:
        return source
    seen = _TRAINED.setdefault(len(source), torch.zeros(len(source), dtype=torch.bool)) if train else None
    return ShardedInput(source, shard_indices(len(source), dist.rank(), dist.world_size(), pad=train), seen)


def trained_indices() -> dict[int, torch.Tensor]:
    """{training set size: the sorted global indices this rank trained on}, since the last call."""
    out = {n: mask.nonzero().squeeze(1) for n, mask in _TRAINED.items()}
    _TRAINED.clear()
    return out


def shard_length(n: int) -> int:
    """Samples one rank trains on: what the memory plan (per process) sizes caches for."""
    return -(-n // dist.world_size())


def global_batch(batch: int) -> int:
    """The batch one optimizer step averages over: the per-rank batch on every rank together."""
    return batch * dist.world_size()


def rank_generators(generator_for: Callable[[int], torch.Generator], seed: int,
                    *key: int | str) -> Callable[[int], torch.Generator]:
    """Batch order and augmentation per rank: seeded by (seed, key, rank, epoch) on several processes."""
    if dist.world_size() == 1:
        return generator_for
    rank = dist.rank()
    return lambda epoch: torch.Generator().manual_seed(derived_seed(seed, *key, "rank", rank, "epoch", epoch))


def data_parallel(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` under DistributedDataParallel (every parameter is used in every step)."""
    if dist.world_size() == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=False)


class _UnitWithHead(nn.Module):
    def __init__(self, unit: nn.Module, head: nn.Module):
        super().__init__()
        self.unit = unit
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.unit(x)
        return h, self.head(h)


class LocalSteps:
    """One NeuroFlux local step per unit: ``steps[i](h, y, optimizer) -> (detached output, loss)``;
    ``close()`` when the block is done.

    Several processes: one DDP per unit+head, not one per block. Local learning backwards each
    unit's own loss at once and steps that unit's own optimizer, so only one unit's graph is ever
    alive (the memory the plan measured). A DDP expects one backward over all its parameters per
    forward: over a whole block that would mean keeping every unit's graph until one summed
    backward (the same gradients, since units are detached, but a different memory peak). Per
    unit+head, each forward is followed by exactly its backward, every parameter is used
    (find_unused_parameters=False holds) and the all-reduce of one unit overlaps nothing it needs.
    """

    def __init__(self, units: Sequence[nn.Module], heads: Sequence[nn.Module], device: torch.device):
        self._batchnorm = synced_batchnorm([*units, *heads])
        if dist.world_size() == 1:
            self.steps = [functools.partial(local_step, unit, head) for unit, head in zip(units, heads)]
            return
        self._batchnorm.__enter__()
        self.steps = [functools.partial(_ddp_local_step, data_parallel(_UnitWithHead(unit, head), device))
                      for unit, head in zip(units, heads)]

    def close(self) -> None:
        self.steps = []  # the DDPs go, and their gradient hooks with them
        if dist.world_size() > 1:
            self._batchnorm.__exit__(None, None, None)


def _ddp_local_step(pair: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, float]:
    """`local_step` itself (same loss, backward, optimizer phase), through the pair's one DDP forward."""
    logits: list[torch.Tensor] = []

    def unit(x: torch.Tensor) -> torch.Tensor:
        h, out = pair(x)
        logits.append(out)
        return h

    return local_step(unit, lambda h: logits.pop(), x, y, optimizer)


@contextlib.contextmanager
def synced_batchnorm(modules: Sequence[nn.Module]) -> Iterator[None]:
    """With `distributed.sync_batchnorm`, the modules' BatchNorm layers compute their statistics over
    the global batch while inside (wrap the modules in DDP inside, not before); the original layers
    (sharing the same parameters and running statistics) are put back afterwards, so the trained net
    exports as it always does."""
    if dist.world_size() == 1 or not _SETTINGS["sync_batchnorm"]:
        yield
        return
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for module in modules:
        for parent in module.modules():
            for name, child in parent.named_children():
                if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
                    swapped.append((parent, name, child))
    for parent, name, child in swapped:
        setattr(parent, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    try:
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def synced_evaluate(evaluate: Callable[[], Sequence[float]], modules: Sequence[nn.Module],
                    source) -> Callable[[], Sequence[float]]:
    """``evaluate`` (accuracies on this rank's validation shard ``source``) made global.

    First the modules' buffers (BatchNorm running statistics, which each rank updated with its own
    last batch) are set to rank 0's, so every rank holds the same model; then the correct counts are
    summed over the ranks and divided by the whole validation set's size."""
    if dist.world_size() == 1:
        return evaluate

    def run() -> list[float]:
        dist.broadcast_tensors([b for m in modules for b in m.buffers()])
        local = list(evaluate())
        counts = dist.all_reduce_sum([*(round(a * len(source)) for a in local), len(source)])
        return [c / counts[-1] for c in counts[:-1]]

    return run


def gradient_bucket_bytes(*modules: nn.Module) -> int:
    """What DDP adds on several processes: its gradient buckets, one persistent copy of the trainable
    parameters' size (the profiler measures the single-process step); 0 on one process."""
    if dist.world_size() == 1:
        return 0
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters() if p.requires_grad)


def with_gradient_buckets(fit, *modules: nn.Module):
    """A unit's profiled memory (`MemoryFit`) plus DDP's gradient buckets (`gradient_bucket_bytes`)."""
    buckets = gradient_bucket_bytes(*modules)
    if not buckets:
        return fit
    import dataclasses

    return dataclasses.replace(fit, fixed_bytes=fit.fixed_bytes + buckets, low_fixed_bytes=fit.low_fixed_bytes + buckets,
                               persistent_bytes=fit.persistent_bytes + buckets)


def weights_digest(modules: Sequence[nn.Module]) -> str:
    """sha256 over every parameter and buffer of ``modules``: equal on every rank after each block."""
    import hashlib

    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
