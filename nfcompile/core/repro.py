"""Seeding, so the same recipe and seed give the same weights, exit and ONNX graph."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator for data order and augmentation."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False  # autotuning picks kernels by timing: not repeatable
    torch.backends.cudnn.deterministic = True
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def derived_seed(seed: int, *parts: int | str) -> int:
    """A stable seed for one piece of work (a block, an epoch), independent of what ran before.

    A resumed run starts mid-way; deriving each block's seed from the recipe seed and the block
    index (instead of drawing from one stream) gives it the same random numbers as a full run.
    """
    import hashlib

    text = ":".join([str(seed), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)
