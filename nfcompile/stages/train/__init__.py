"""Train stage: NeuroFlux (the method), or the baselines and fine-tuning methods it is compared with.

Every method returns a `MultiExitNet` (the trained model with its exits) and a `TrainResult`,
and checkpoints into ``out_dir`` so `--resume` can continue.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nfcompile.core import distributed as dist
from nfcompile.core.memory import training_scope
from nfcompile.core.results import Plan, TrainOutcome
from nfcompile.data.datasets import DataBundle
from nfcompile.models import UnitNet
from nfcompile.recipe.schema import AugmentSection, BudgetSection, ModelSection, TrainSection
from nfcompile.stages.train.backprop import train_backprop
from nfcompile.stages.train.ranks import with_ranks

from nfcompile.stages.train.finetune import finetune_gradient_filter
from nfcompile.stages.train.neuroflux import train_neuroflux

__all__ = ["TrainOutcome", "train_model"]

TRAINERS = {"neuroflux": train_neuroflux, "backprop": train_backprop, "gradient_filter": finetune_gradient_filter}

def train_model(unit_net: UnitNet, plan: Plan | None, data: DataBundle, *, model: ModelSection, train: TrainSection,
                augment: AugmentSection, budget: BudgetSection, device: torch.device, seed: int, out_dir: Path,
                resume: bool, fingerprint: str) -> TrainOutcome:
    """``plan`` is None only for gradient_filter, which fine-tunes without a NeuroFlux memory plan.

    Several processes (torchrun): every rank calls this with the same plan; each trains on its shard,
    and rank 0's result gains ``details["distributed"]`` (every rank's peaks, weight digests and shard)."""
    # The budget covers what the training holds, not what else the process keeps (an API caller's models).
    with training_scope(device, [unit_net]):
        outcome = TRAINERS[train.method](unit_net, plan, data, model=model, train=train, augment=augment,
                                         budget=budget, device=device, seed=seed, out_dir=out_dir, resume=resume,
                                         fingerprint=fingerprint)
    if dist.world_size() == 1:
        return outcome
    return TrainOutcome(outcome.net, with_ranks(outcome.result, device))
