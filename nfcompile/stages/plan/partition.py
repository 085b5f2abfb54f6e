"""The partitioner: consecutive units grouped into memory-homogeneous blocks, each with the largest
batch size the budget allows, and where each block's output cache lives.

A block keeps all its units' weights and optimizer state resident, but only one unit's step is in
flight at a time (NeuroFlux detaches between units), so at batch b a block needs

    sum of its units' resident bytes + max(preparing its input batch, max over units of
                                           (mem_unit(b) - resident_unit)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import psutil

from nfcompile.core.memory import MemoryFit
from nfcompile.recipe.schema import CacheSection


def block_peak(fits: Sequence[MemoryFit], batch: int, fetch_bytes_per_sample: int = 0) -> int:
    """``fetch_bytes_per_sample``: what preparing the block's input batch holds per sample."""
    return sum(f.persistent_bytes for f in fits) + block_activations(fits, batch, fetch_bytes_per_sample)


def block_activations(fits: Sequence[MemoryFit], batch: int, fetch_bytes_per_sample: int = 0) -> int:
    """What a block's step holds at ``batch`` beyond its units' persistent state: its hungriest unit's step,
    or preparing the input batch."""
    return max(max(f.predicted(batch) - f.persistent_bytes for f in fits), batch * fetch_bytes_per_sample)


def block_max_batch(fits: Sequence[MemoryFit], budget: int, cap: int, fetch_bytes_per_sample: int = 0) -> int:
    """Largest batch in [1, cap] whose predicted block peak fits ``budget``; 0 if none does."""
    if block_peak(fits, 1, fetch_bytes_per_sample) > budget:
        return 0
    low, high = 1, cap
    while low < high:  # the peak grows with the batch: binary search
        mid = (low + high + 1) // 2
        if block_peak(fits, mid, fetch_bytes_per_sample) <= budget:
            low = mid
        else:
            high = mid - 1
    return low


def partition_blocks(fits: Sequence[MemoryFit], budget: int, *, split_ratio: float, cap: int,
                     fetch_bytes_per_sample: Sequence[int] | None = None,
                     max_units: int | None = None) -> list[tuple[list[int], int]]:
    """Walk the units in order; start a new block where the batch a unit could train at alone differs
    from the block's by more than ``split_ratio``, where joining would cut the block's batch by
    more than that (its resident weights add up), or where the block already holds ``max_units``
    units (None: no limit). Returns (unit indices, batch size) per block.
    ``fetch_bytes_per_sample[i]``: preparing unit i's input when it starts a block."""
    fetch = list(fetch_bytes_per_sample or [0] * len(fits))
    blocks: list[tuple[list[int], int]] = []
    current = [0]
    current_batch = block_max_batch([fits[0]], budget, cap, fetch[0])
    for index in range(1, len(fits)):
        alone = block_max_batch([fits[index]], budget, cap, fetch[index])
        joined = block_max_batch([fits[i] for i in current] + [fits[index]], budget, cap, fetch[current[0]])
        similar = max(current_batch, alone) <= split_ratio * min(current_batch, alone)
        room = max_units is None or len(current) < max_units
        if joined > 0 and similar and room and joined * split_ratio >= current_batch:
            current.append(index)
            current_batch = joined
        else:
            blocks.append((current, current_batch))
            current, current_batch = [index], alone
    blocks.append((current, current_batch))
    return blocks


@dataclass(frozen=True)
class CachePlacement:
    placement: str  # device | host | disk | none
    bytes: int
    reason: str


def host_cache_limit(cache: CacheSection) -> int:
    """Host RAM a cache may take: cache.max_host_bytes, else half of what is available now."""
    return cache.max_host_bytes or psutil.virtual_memory().available // 2


def place_cache(cache_bytes: int, *, device_type: str, requested: str, device_headroom: int,
                host_limit: int) -> CachePlacement:
    """Device if it fits the budget's headroom, else host RAM (CUDA only: on CPU the host RAM *is*
    the training device and counts against the budget), else a memory-mapped file."""
    if cache_bytes == 0:
        return CachePlacement("none", 0, "last block: nothing to cache")
    if requested != "auto":
        return CachePlacement(requested, cache_bytes, "train.neuroflux.cache.placement")
    # On CPU the device memory is host RAM: the cache must fit the budget's headroom and the RAM at hand.
    if cache_bytes <= device_headroom and (device_type == "cuda" or cache_bytes <= host_limit):
        return CachePlacement("device", cache_bytes, "fits the budget's headroom")
    if device_type == "cuda" and cache_bytes <= host_limit:
        return CachePlacement("host", cache_bytes, "over the device headroom, fits host RAM")
    return CachePlacement("disk", cache_bytes, "fits neither the budget's headroom nor the host RAM limit")
