"""Mini-batches from in-memory tensors, with augmentation done on whole batches.

The same augmentation runs on images (the first block) and on cached activations (later blocks):
a random shift (zero-pad, then crop back) and, where the data allows it, a horizontal flip. Both
commute with convolution up to border effects, so shifting a feature map by one cell is close to
shifting the image by the layer's stride; that is how NeuroFlux keeps augmenting after caching.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from nfcompile.data.datasets import ImageSet
from nfcompile.data.preprocess import Preprocessing


@dataclass(frozen=True)
class Augment:
    flip: bool = False
    shift: int = 0  # pixels (or feature cells) of random translation, 0 disables

    @property
    def active(self) -> bool:
        return self.flip or self.shift > 0


def augment_batch(x: torch.Tensor, augment: Augment, generator: torch.Generator) -> torch.Tensor:
    """Random per-sample shift and flip of an (N,C,H,W) batch; draws from ``generator`` only."""
    if not augment.active:
        return x
    n = x.shape[0]
    if augment.shift > 0:
        pad = augment.shift
        height, width = x.shape[-2:]
        padded = F.pad(x, (pad, pad, pad, pad))
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
        # One gather for the whole batch: row/column indices per sample.
        rows = (offsets[:, 0:1] + torch.arange(height)).to(x.device)
        cols = (offsets[:, 1:2] + torch.arange(width)).to(x.device)
        batch = torch.arange(n, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if augment.flip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x.contiguous()


def batch_order(n: int, batch_size: int, shuffle: bool, generator: torch.Generator | None) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    return list(order.split(batch_size))


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
