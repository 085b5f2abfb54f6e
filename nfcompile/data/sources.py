"""Where a training step's input batch comes from: images, or an activation cache.

The activation cache holds a finished block's outputs, so that block never runs forward again.
Its placement (decided by the plan): on the training device if it fits the budget's headroom, else
in host RAM, else in a memory-mapped file under the run folder, deleted once no longer needed.
Trainers and the profiler call the same `fetch`, so the memory the profiler measures for preparing
a batch is the memory training uses.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch

from nfcompile.data.batches import Augment, augment_batch
from nfcompile.data.datasets import ImageSet
from nfcompile.data.preprocess import Preprocessing

TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32}
NUMPY_DTYPES = {"float16": np.float16, "float32": np.float32}
CACHE_DTYPE_BYTES = {name: dtype.itemsize for name, dtype in TORCH_DTYPES.items()}


class ActivationCache:
    def __init__(self, placement: str, count: int, shape: tuple[int, ...], dtype: str, *,
                 device: torch.device, folder: Path | None = None, name: str = "cache"):
        self.placement = placement
        self.count = count
        self.shape = tuple(shape)
        self.dtype = dtype
        self.device = device
        self.path: Path | None = None
        if placement == "disk":
            if folder is None:
                raise ValueError("a disk cache needs a folder")
            folder.mkdir(parents=True, exist_ok=True)
            # Hidden: scratch, so the next run in this folder removes what a killed one left behind.
            self.path = folder / f".{name}.{dtype}.bin"
            self.store = np.memmap(self.path, dtype=NUMPY_DTYPES[dtype], mode="w+", shape=(count, *shape))
        else:
            where = device if placement == "device" else torch.device("cpu")
            # A host cache is not pinned. A read gathers its rows into a new pageable tensor first, so
            # pinning helped only the caching pass's writes, while torch's pinned allocator rounds a block
            # up to a power of two (a 2.1 GB cache would lock 4 GiB, beyond the host limit the plan checked).
            self.store = torch.empty((count, *shape), dtype=TORCH_DTYPES[dtype], device=where)

    @property
    def nbytes(self) -> int:
        return int(self.count * int(np.prod(self.shape)) * np.dtype(NUMPY_DTYPES[self.dtype]).itemsize)

    def device_tensors(self) -> list[torch.Tensor]:
        """What of this cache lives on the training device (counted in the measured peak)."""
        return [self.store] if self.placement == "device" else []

    def write(self, start: int, values: torch.Tensor) -> None:
        end = start + values.shape[0]
        if self.placement == "disk":
            self.store[start:end] = values.detach().to("cpu", TORCH_DTYPES[self.dtype]).numpy()
        else:
            self.store[start:end].copy_(values.detach(), non_blocking=True)

    def read(self, indices: torch.Tensor) -> torch.Tensor:
        """float32 rows ``indices`` on the training device."""
        if self.placement == "disk":
            rows = torch.from_numpy(np.ascontiguousarray(self.store[indices.numpy()]))
            return rows.to(self.device, torch.float32)
        rows = self.store[indices.to(self.store.device)]
        return rows.to(self.device, torch.float32, non_blocking=True)

    def close(self) -> None:
        """Free memory and delete the backing file (the cache cleans up after itself)."""
        if self.placement == "disk" and self.path is not None:
            store = self.store
            self.store = None
            del store
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self.store = None


class ImageInput:
    """A block's input when it is the first block: the images themselves."""

    def __init__(self, images: ImageSet, preprocessing: Preprocessing, augment: Augment, device: torch.device):
        self.images = images
        self.preprocessing = preprocessing
        self.augment = augment
        self.device = device
        self.labels = images.labels

    def __len__(self) -> int:
        return len(self.images)

    def device_tensors(self) -> list[torch.Tensor]:
        return []

    def fetch(self, indices: torch.Tensor, generator: torch.Generator | None, *, train: bool):
        x = self.images.images[indices]
        if train and self.augment.active:
            x = augment_batch(x, self.augment, generator)
        return self.preprocessing.normalize(x.to(self.device)), self.labels[indices].to(self.device)


def unaugmented(images: ImageSet, preprocessing: Preprocessing, device: torch.device) -> ImageInput:
    """Images as evaluation reads them: normalized, never augmented."""
    return ImageInput(images, preprocessing, Augment(), device)


class CachedInput:
    """A later block's input: an earlier block's cached outputs, augmented at feature level."""

    def __init__(self, cache: ActivationCache, labels: torch.Tensor, augment: Augment):
        self.cache = cache
        self.labels = labels
        self.augment = augment
        self.device = cache.device

    def __len__(self) -> int:
        return self.cache.count

    def device_tensors(self) -> list[torch.Tensor]:
        return self.cache.device_tensors()

    def fetch(self, indices: torch.Tensor, generator: torch.Generator | None, *, train: bool):
        x = self.cache.read(indices)
        if train and self.augment.active:
            x = augment_batch(x, self.augment, generator)
        return x, self.labels[indices].to(self.device)


class RecomputedInput:
    """A later block's input computed afresh for every batch: the finished units run forward (eval
    mode, no gradients) on the upstream source. No cache at all, at the cost of repeating that work
    each epoch; image augmentation then stays at the image level."""

    def __init__(self, upstream, units: list):
        self.upstream = upstream
        self.units = units
        self.labels = upstream.labels
        self.device = upstream.device

    def __len__(self) -> int:
        return len(self.upstream)

    def device_tensors(self) -> list[torch.Tensor]:
        return self.upstream.device_tensors()

    @torch.no_grad()
    def fetch(self, indices: torch.Tensor, generator: torch.Generator | None, *, train: bool):
        x, y = self.upstream.fetch(indices, generator, train=train)
        for unit in self.units:
            unit.eval()
            x = unit(x)
        return x, y


class ShardedInput:
    """One rank's shard of a source (a distributed run): local positions 0..len-1 stand for the
    global sample indices ``indices``. Whatever a later block caches from it is this shard's, in
    this order, so the cache rows are keyed by ``indices`` too."""

    def __init__(self, upstream, indices: torch.Tensor, seen: torch.Tensor | None = None):
        self.upstream = upstream
        self.indices = indices
        self.seen = seen  # optional bool mask over the global indices: which ones training fetched
        self.labels = upstream.labels[indices]
        self.device = upstream.device

    def __len__(self) -> int:
        return len(self.indices)

    def device_tensors(self) -> list[torch.Tensor]:
        return self.upstream.device_tensors()

    def fetch(self, indices: torch.Tensor, generator: torch.Generator | None, *, train: bool):
        chosen = self.indices[indices]
        if train and self.seen is not None:
            self.seen[chosen] = True
        return self.upstream.fetch(chosen, generator, train=train)
