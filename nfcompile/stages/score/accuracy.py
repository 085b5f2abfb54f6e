"""Top-1 accuracy of several exits at once: one pass through the trunk serves every head."""

from __future__ import annotations

from typing import Sequence

import torch

from nfcompile.core.training import EVAL_BATCH_SIZE
from nfcompile.data.batches import image_batches
from nfcompile.data.datasets import ImageSet
from nfcompile.data.preprocess import Preprocessing
from nfcompile.models.early_exit import MultiExitNet


def exit_accuracies(net: MultiExitNet, units: Sequence[int], images: ImageSet, preprocessing: Preprocessing,
                    *, device: torch.device, batch_size: int = EVAL_BATCH_SIZE) -> dict[int, float]:
    """Fraction of ``images`` each exit in ``units`` classifies correctly (eval mode, on ``device``).

    The caller's net keeps its device and train/eval mode.
    """
    if len(images) == 0:
        raise ValueError("no images to score exits on")
    was_training = net.training
    home = next(net.parameters()).device
    net.eval().to(device)
    correct = dict.fromkeys(units, 0)
    try:
        with torch.inference_mode():
            for x, y in image_batches(images, batch_size, preprocessing, device=device):
                for unit, logits in net.forward_exits(x, list(units)).items():
                    correct[unit] += int((logits.argmax(dim=1) == y).sum())
    finally:
        net.train(was_training).to(home)
    return {unit: count / len(images) for unit, count in correct.items()}
