"""Train stage for `train.method: gradient_filter`: fine-tune a trained model's last conv layers with
filtered gradients (Yang et al., CVPR 2023). The method itself lives in `gradient_filter.py`; this
wraps it into the stage's contract: a `MultiExitNet` with the model's own exit, a `TrainResult`
and a checkpoint that `--resume` reuses."""

from __future__ import annotations

from pathlib import Path

import torch

from nfcompile.core.results import BlockResult, Plan, TrainOutcome, TrainResult
from nfcompile.data.batches import Augment
from nfcompile.data.datasets import DataBundle
from nfcompile.models import MultiExitNet, UnitNet
from nfcompile.recipe.schema import AugmentSection, BudgetSection, ModelSection, TrainSection

from nfcompile.stages.train.budget import block_meter, with_memory
from nfcompile.stages.train.checkpoint import restore_single_exit, save_single_exit
from nfcompile.stages.train.gradient_filter import train_gradient_filter


def finetune_gradient_filter(unit_net: UnitNet, plan: Plan | None, data: DataBundle, *, model: ModelSection,
                             train: TrainSection, augment: AugmentSection, budget: BudgetSection,
                             device: torch.device, seed: int, out_dir: Path, resume: bool,
                             fingerprint: str) -> TrainOutcome:
    net = MultiExitNet.single_exit(unit_net)
    last = net.exit_units[-1]
    checkpoint = out_dir / "checkpoint.pt"
    finished = restore_single_exit(checkpoint, fingerprint, net) if resume else None
    if finished is not None:
        return TrainOutcome(net, finished)
    # No memory plan to hold (fine-tuning): the peak is measured all the same and reported.
    with block_meter(device, [unit_net], data) as meter:
        outcome = train_gradient_filter(unit_net, data, train, device=device, seed=seed,
                                        augment=Augment(augment.flip, augment.crop_padding))
    summary = outcome.summary
    best = max(record.val_accuracy[0] for record in summary.history)
    block = with_memory(BlockResult(
        index=0, units=tuple(range(last + 1)), batch_size=summary.batch_size, trained=True,
        stop_reason=summary.stop_reason, epochs_run=summary.epochs_run, best_val_accuracy=(best,),
        measured_peak_bytes=None, predicted_peak_bytes=0, budget_bytes=None, seconds=summary.seconds,
        cache_placement="none", cache_bytes=0, cache_seconds=0.0, history=summary.history), meter.reading)
    result = TrainResult(method="gradient_filter", device=str(device), budget_bytes=None, checkpoint=checkpoint.name,
                         blocks=(block,), exit_units=(last,), exit_val_accuracy=(summary.val_accuracy,),
                         seconds=summary.seconds, details=summary.to_dict())
    save_single_exit(checkpoint, fingerprint, net, model, data.info.num_classes, result)
    return TrainOutcome(net, result)
