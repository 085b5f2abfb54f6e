"""Top-1 accuracy of several exits at once (one pass through the trunk serves every head), and the
paired counts selection needs to tell two exits' accuracies apart on the same images."""

from __future__ import annotations

from typing import Sequence

import torch

from nfcompile.data.datasets import ImageSet
from nfcompile.data.preprocess import Preprocessing
from nfcompile.data.sources import unaugmented
from nfcompile.learning import eval_mode, top1_hits
from nfcompile.models.early_exit import MultiExitNet


def exits_hits(net: MultiExitNet, units: Sequence[int], images: ImageSet, preprocessing: Preprocessing, *,
               device: torch.device) -> dict[int, torch.Tensor]:
    """Per exit in ``units``: which of ``images`` it classifies correctly (bool, eval mode, on ``device``).

    The caller's net keeps its device and train/eval mode.
    """
    units = sorted(units)
    home = next(net.parameters()).device
    try:
        with eval_mode(net.to(device)), torch.inference_mode():
            hits = top1_hits(lambda x: [logits for _, logits in sorted(net.forward_exits(x, units).items())],
                             unaugmented(images, preprocessing, device))
    finally:
        net.to(home)
    return dict(zip(units, hits))


def share_right(hits: torch.Tensor) -> float:
    """Top-1 accuracy from one exit's ``hits``: an exact ratio of counts (selection's window edges
    compare them)."""
    return int(hits.sum()) / len(hits)


def right_where_wrong(hits: Sequence[torch.Tensor]) -> tuple[tuple[int, ...], ...]:
    """Entry [i][j]: how many images exit i classifies correctly and exit j does not.

    With the accuracies, these discordant counts are what a paired comparison of two exits on the
    same images needs (McNemar's): far tighter than comparing two independent accuracies, since
    exits of one network mostly get the same images right.
    """
    stacked = torch.stack(list(hits)).to(torch.int32)
    # right_i * (1 - right_j), summed over images: one matrix product.
    counts = stacked @ (1 - stacked).T
    return tuple(tuple(int(c) for c in row) for row in counts)
