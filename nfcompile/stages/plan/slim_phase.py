"""The slim heads' phase of a block (neuroflux.slim_heads), as the plan sizes it.

Once a block has trained, its frozen units' outputs, pooled as each head pools them, are computed once
and cached, and slim copies of the heads train on them (`stages/train/slim_heads.py`). The plan decides
where those features go and counts them in the block's predicted peak: on the device they can hold more
than the block's step itself (12 MiB of features beside an 8 MiB step on the last block of the
benchmarks' ResNet-18 at its moderate budget).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from nfcompile.core.results import UnitProfile
from nfcompile.data.sources import CACHE_DTYPE_BYTES
from nfcompile.models.heads import FLOAT_BYTES, head_bytes_per_sample
from nfcompile.recipe.schema import NeuroFluxSection
from nfcompile.stages.plan.partition import place_cache
from nfcompile.stages.plan.profile import writing_pass_batch


@dataclass(frozen=True)
class SlimPhase:
    placement: str  # where the features are cached: device | host | disk | none (no exit gets a slim head)
    feature_bytes: int  # every slimmed exit's pooled input, train and monitor splits
    peak_bytes: int  # the phase's predicted peak (0: no phase)
    features_batch: int = 0  # the batch of the pass that computes the features (0: no phase)


def slim_filters(filters: int, share: float) -> int:
    return max(1, round(filters * share))


def slimmed_positions(units: list[UnitProfile], share: float) -> list[int]:
    """Positions in the block of the units whose slim copy is narrower than their head (the others keep theirs)."""
    return [i for i, unit in enumerate(units) if slim_filters(unit.head_filters, share) < unit.head_filters]


def pooled_size(unit: UnitProfile) -> tuple[int, int]:
    """The unit's output as its head pools it, per sample: (channels, elements per channel; kernel =
    stride, ceil mode: ceil(side / kernel) per side)."""
    channels, *spatial = unit.out_shape
    return channels, math.prod(-(-side // unit.head_pool) for side in spatial)


def plan_slim_phase(units: list[UnitProfile], section: NeuroFluxSection, *, block_batch: int, evaluation_batch: int,
                    train_samples: int, val_samples: int, pass_peak: Callable[[int, int], int], resident: int,
                    planned_peak: int, budget: int, device_type: str, host_limit: int) -> SlimPhase:
    """The phase after a block whose units are ``units`` and batch ``block_batch``.

    ``pass_peak(batch, written)``: the predicted peak of the pass that computes the features at ``batch``
    (an evaluation's forward without the heads' convs) while it writes one batch's features in the cache's
    precision (``written`` bytes); the pass runs at ``evaluation_batch`` where that fits ``budget``, else at
    the largest batch that does (`writing_pass_batch`). ``resident``: what stays on the device meanwhile
    (the block's weights, its input cache, the rest of the network); ``planned_peak``: the block's peak
    without the phase. The features go where the activation cache would (with auto, or recompute, which
    has no cache to follow: on the device where they fit beside the higher of that peak and the phase's
    own, else host RAM on CUDA, else a memory-mapped file), and stay through the slim heads' steps."""
    share = section.slim_heads.share
    slimmed = [] if share is None else slimmed_positions(units, share)
    if not slimmed:
        return SlimPhase("none", 0, 0)
    per_sample = CACHE_DTYPE_BYTES[section.cache.dtype] * sum(math.prod(pooled_size(units[i])) for i in slimmed)
    step_per_sample = _step_bytes_per_sample(units, share)
    batch = slim_batch(units, block_batch, share, section.slim_heads.batch_size, train_samples,
                       step_bytes_per_sample=step_per_sample)
    writing = lambda b: pass_peak(b, b * per_sample)
    features_batch = writing_pass_batch(writing, evaluation_batch, budget, section.profile_batch_sizes)
    without_features = max(writing(features_batch), resident + batch * step_per_sample)
    requested = "auto" if section.cache.placement == "recompute" else section.cache.placement
    placement = place_cache(per_sample * (train_samples + val_samples), device_type=device_type,
                            requested=requested, device_headroom=budget - max(planned_peak, without_features),
                            host_limit=host_limit)
    on_device = placement.bytes if placement.placement == "device" else 0
    return SlimPhase(placement.placement, placement.bytes, without_features + on_device, features_batch)


def slim_batch(units: list[UnitProfile], block_batch: int, share: float, wanted: int, samples: int, *,
               step_bytes_per_sample: int | None = None) -> int:
    """``wanted``, where its steps fit in the activations the block's own step held at its batch (gone by
    now; at that batch they surely fit: a slim head's features and maps are no larger than its unit's and
    the wide head's). A batch reads every slim head's features (float32), and one head at a time keeps its
    maps for its backward (`head_bytes_per_sample`, on the pooled map), and their gradients during it.
    Early units' steps hold far more per sample than a slim head on pooled features, so their blocks' small
    batches do not hold the slim heads back; the block's meter measures what the steps really take."""
    freed = block_batch * min(unit.bytes_per_sample for unit in units)
    per_sample = step_bytes_per_sample or _step_bytes_per_sample(units, share)
    return max(1, min(wanted, samples, max(block_batch, freed // per_sample)))


def _step_bytes_per_sample(units: list[UnitProfile], share: float) -> int:
    slimmed = [units[i] for i in slimmed_positions(units, share)]
    sizes = [pooled_size(unit) for unit in slimmed]
    return FLOAT_BYTES * sum(channels * spatial for channels, spatial in sizes) + max(
        2 * unit.head_depth * head_bytes_per_sample(slim_filters(unit.head_filters, share), spatial)
        for unit, (_, spatial) in zip(slimmed, sizes))
