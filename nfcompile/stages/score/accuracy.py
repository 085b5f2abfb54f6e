"""Top-1 accuracy of several exits at once: one pass through the trunk serves every head."""

from __future__ import annotations

from typing import Sequence

import torch

from nfcompile.data.datasets import ImageSet
from nfcompile.data.preprocess import Preprocessing
from nfcompile.data.sources import unaugmented
from nfcompile.learning import eval_mode, top1_accuracies
from nfcompile.models.early_exit import MultiExitNet


def exits_top1(net: MultiExitNet, units: Sequence[int], images: ImageSet, preprocessing: Preprocessing, *,
               device: torch.device) -> dict[int, float]:
    """Share of ``images`` each exit in ``units`` classifies correctly (eval mode, on ``device``).

    The caller's net keeps its device and train/eval mode.
    """
    units = sorted(units)
    home = next(net.parameters()).device
    try:
        with eval_mode(net.to(device)), torch.inference_mode():
            accuracy = top1_accuracies(lambda x: [logits for _, logits in sorted(net.forward_exits(x, units).items())],
                                       unaugmented(images, preprocessing, device))
    finally:
        net.to(home)
    return dict(zip(units, accuracy))
