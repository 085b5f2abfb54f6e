"""Mini-batches from in-memory tensors, with augmentation done on whole batches.

The same augmentation runs on images (the first block) and on cached activations (later blocks):
a random shift (zero-pad, then crop back) and, where the data allows it, a horizontal flip. Both
commute with convolution up to border effects, so shifting a feature map by one cell is close to
shifting the image by the layer's stride; that is how NeuroFlux keeps augmenting after caching.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from nfcompile.data.datasets import DataBundle, ImageSet
from nfcompile.data.preprocess import Preprocessing


@dataclass(frozen=True)
class Augment:
    flip: bool = False
    shift: int = 0  # pixels (or feature cells) of random translation, 0 disables

    @property
    def active(self) -> bool:
        return self.flip or self.shift > 0


def augment_batch(x: torch.Tensor, augment: Augment, generator: torch.Generator) -> torch.Tensor:
    """Random per-sample shift (zero fill) and flip of an (N,C,H,W) batch; draws from ``generator`` only.

    Memory matters here: the batch is prepared inside the training step the budget covers, so this
    holds at most the batch, one output and one group's slice (samples are grouped by offset),
    instead of padded and gathered copies of the whole batch.
    """
    if not augment.active:
        return x
    n = x.shape[0]
    if augment.shift > 0:
        span = 2 * augment.shift + 1
        offsets = torch.randint(0, span, (n, 2), generator=generator) - augment.shift
        height, width = x.shape[-2:]
        out = torch.zeros_like(x)
        for dy, dx in offsets.unique(dim=0).tolist():
            # out[..., i, j] = x[..., i - dy, j - dx] where that lies inside the map.
            rows = slice(max(0, dy), height + min(0, dy)), slice(max(0, -dy), height - max(0, dy))
            cols = slice(max(0, dx), width + min(0, dx)), slice(max(0, -dx), width - max(0, dx))
            members = ((offsets[:, 0] == dy) & (offsets[:, 1] == dx)).nonzero().squeeze(1).to(x.device)
            out[members, :, rows[0], cols[0]] = x[members][:, :, rows[1], cols[1]]
        x = out
    if augment.flip:
        flip = (torch.rand(n, generator=generator) < 0.5).nonzero().squeeze(1).to(x.device)
        x = x if augment.shift > 0 else x.clone()  # never write into the caller's tensor
        x[flip] = x[flip].flip(-1)
    return x


def feature_augment(image_augment: Augment, image_size: int, feature_size: int, enabled: bool) -> Augment:
    """The image augmentation carried to a feature map of side ``feature_size``: a shift of
    ``shift`` pixels is about shift / stride cells there (at least one, while the map is big enough
    to shift); flips carry over as they are."""
    if not enabled:
        return Augment()
    shift = 0
    if image_augment.shift > 0 and feature_size >= 4:
        shift = max(1, round(image_augment.shift * feature_size / image_size))
    return Augment(flip=image_augment.flip, shift=shift)


# An epoch's batch order is one int64 index per sample, alive through the epoch (the plan counts it).
ORDER_BYTES_PER_SAMPLE = 8


def batch_order(n: int, batch_size: int, shuffle: bool, generator: torch.Generator | None) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    return list(order.split(batch_size))


def shard_indices(n: int, rank: int, world_size: int, *, pad: bool) -> torch.Tensor:
    """The global sample indices rank ``rank`` of ``world_size`` owns: every ``world_size``-th one
    from ``rank`` on, so the shards are disjoint and together cover ``range(n)``. With ``pad`` every
    shard is as long as the longest (some shards repeat their first samples, as DistributedSampler
    does): data-parallel training needs every rank to take the same number of steps."""
    if n < world_size:
        raise ValueError(f"{n} samples cannot be shared by {world_size} processes")
    shard = torch.arange(rank, n, world_size)
    if pad:
        longest = -(-n // world_size)
        shard = torch.cat([shard, shard[: longest - len(shard)]])
    return shard


def image_batches(images: ImageSet, batch_size: int, preprocessing: Preprocessing, *,
                  device: torch.device, shuffle: bool = False, generator: torch.Generator | None = None,
                  augment: Augment = Augment()) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalized float batches (and labels) on ``device``; augmentation on the uint8 images."""
    for index in batch_order(len(images), batch_size, shuffle, generator):
        x = images.images[index]
        if augment.active:
            x = augment_batch(x, augment, generator)
        yield preprocessing.normalize(x.to(device)), images.labels[index].to(device)


def calibration_images(images: ImageSet, count: int, seed: int) -> ImageSet:
    """A fixed random subset of the training split (INT8 calibration, profiling inputs)."""
    generator = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(images), generator=generator)[: min(count, len(images))].sort().values
    return images.subset(keep)


def calibration_array(data: DataBundle, count: int, seed: int) -> np.ndarray:
    """The build's INT8 calibration inputs: ``calibration_images`` of the training split, preprocessed."""
    return data.preprocessing.normalize(calibration_images(data.train, count, seed).images).numpy()
