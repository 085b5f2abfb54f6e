"""DRIVE pruning and its baselines at the same sparsity. Output: `PruneResult`.

Every method starts from the same weights W0 (the model handed in), trains on the same batches
epoch by epoch under one learning-rate schedule, and its final sparse model gets the same training
budget of ``T = max(train.epochs, dense_epochs + rounds * finetune_epochs)`` epochs:

- drive: one run of T epochs. Dense for ``dense_epochs``, then ``rounds`` times: score every alive
  weight with the DRIVE score (`scores.py`), prune globally to the next step of the exponential
  schedule and fine-tune ``finetune_epochs`` with the mask; the remaining epochs train the final
  sparse network. Pruning happens early in training, as in the paper, at no extra epochs.
- snip: |w * dL/dw| at W0, one shot to the target sparsity, then T epochs of masked training.
- synflow: the data-free SynFlow score at W0, iterated (100 steps of an exponential schedule, as in
  its paper), then T epochs of masked training.
- magnitude: lottery-ticket iterative magnitude pruning with weight rewinding: T dense epochs,
  keeping the weights reached after ``dense_epochs`` as the rewind point (W0 when it is 0); then
  ``rounds`` times: prune the smallest |w| to the next sparsity, rewind the survivors (and the
  BatchNorm statistics) to the rewind point and retrain epochs dense_epochs..T. Its cost grows with
  the rounds: that is the wall time DRIVE is measured against.

Masks are enforced after every optimizer step. Pruning writes zeros into the weights (no
reparametrization), so the pruned model exports as is.
"""

from __future__ import annotations

import copy
import time
import zlib
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from nfcompile.core.log import get_logger
from nfcompile.core.repro import derived_seed, seed_everything
from nfcompile.core.results import PruneOutcome, PruneResult
from nfcompile.data.batches import image_batches
from nfcompile.data.sources import unaugmented
from nfcompile.learning import top1_accuracy
from nfcompile.data.datasets import DataBundle
from nfcompile.recipe.schema import PruneSection, TrainSection
from nfcompile.stages.prune.masks import (Masks, apply_masks, exponential_schedule, full_masks, global_masks,
                                          layer_sparsity, prunable_weights, weight_sparsity)
from nfcompile.stages.prune.scores import (drive_scores, linearized_copy, magnitude_scores, mean_gradients,
                                           snip_scores, synflow_scores)
from nfcompile.stages.prune.training import batch_size_for, train_masked

log = get_logger(__name__)

SCORE_BATCHES = 8  # training batches whose mean gradient scores a round (DRIVE, SNIP)
SYNFLOW_ITERATIONS = 100  # as in the SynFlow paper


@dataclass(frozen=True)
class _Run:
    """Everything a method needs besides the model."""

    data: DataBundle
    section: PruneSection
    train: TrainSection
    device: torch.device
    seed: int
    score_batches: int
    synflow_iterations: int
    # Samples pushed through forward and backward (training, scoring): the method's cost in work,
    # which unlike wall time does not depend on what else the machine is doing.
    samples: list[int] = field(default_factory=lambda: [0])

    @property
    def total_epochs(self) -> int:
        """T: the training budget of every method's final sparse model."""
        pruning = self.section.dense_epochs + self.section.rounds * self.section.finetune_epochs
        return max(self.train.epochs, pruning)

    def scoring_batches(self, round_index: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(derived_seed(self.seed, "prune-score", round_index))
        batches = image_batches(self.data.train, batch_size_for(self.train, self.data), self.data.preprocessing,
                                device=self.device, shuffle=True, generator=generator)
        chosen = list(islice(batches, self.score_batches))
        self.samples[0] += sum(len(y) for _, y in chosen)
        return chosen

    def fit(self, model: nn.Module, masks: Masks | None, epochs: range,
            before_epoch: Callable[[int], Masks | None] | None = None) -> Masks | None:
        self.samples[0] += len(epochs) * len(self.data.train)
        return train_masked(model, masks, self.data, self.train, device=self.device, seed=self.seed,
                            epochs=epochs, total_epochs=self.total_epochs, before_epoch=before_epoch)


def _drive(model: nn.Module, run: _Run) -> int:
    weights = prunable_weights(model)
    schedule = exponential_schedule(run.section.sparsity, run.section.rounds)
    rounds_at: dict[int, list[int]] = {}
    for r in range(run.section.rounds):
        rounds_at.setdefault(run.section.dense_epochs + r * run.section.finetune_epochs, []).append(r)
    masks = full_masks(weights)

    def prune_rounds(epoch: int) -> Masks | None:
        nonlocal masks
        if epoch not in rounds_at:
            return None
        for r in rounds_at[epoch]:
            gradients = mean_gradients(model, run.scoring_batches(r))
            masks = global_masks(drive_scores(model, gradients, masks), schedule[r], masks)
            apply_masks(weights, masks)  # the next round scores the pruned network
            log.info("drive round %d at epoch %d: sparsity %.4f", r + 1, epoch, schedule[r])
        return masks

    run.fit(model, None, range(run.total_epochs), prune_rounds)
    prune_rounds(run.total_epochs)  # rounds due once training is over (finetune_epochs: 0, no epochs left)
    return run.total_epochs


def _magnitude(model: nn.Module, run: _Run) -> int:
    dense, total = run.section.dense_epochs, run.total_epochs
    rewind: dict[str, torch.Tensor] = {}

    def keep_rewind_point(epoch: int) -> None:
        if epoch == dense:
            rewind.update({k: v.detach().clone() for k, v in model.state_dict().items()})

    keep_rewind_point(0)
    run.fit(model, None, range(total), keep_rewind_point)
    keep_rewind_point(total)  # dense_epochs == T: rewind to the end of dense training
    masks: Masks | None = None
    epochs = total
    for r, sparsity in enumerate(exponential_schedule(run.section.sparsity, run.section.rounds)):
        masks = global_masks(magnitude_scores(model), sparsity, masks)
        model.load_state_dict(rewind)
        run.fit(model, masks, range(dense, total))
        epochs += total - dense
        log.info("magnitude round %d: sparsity %.4f, rewound to epoch %d", r + 1, sparsity, dense)
    return epochs


def _snip(model: nn.Module, run: _Run) -> int:
    gradients = mean_gradients(model, run.scoring_batches(0))
    masks = global_masks(snip_scores(model, gradients), run.section.sparsity)
    run.fit(model, masks, range(run.total_epochs))
    return run.total_epochs


def _synflow(model: nn.Module, run: _Run) -> int:
    size = run.data.preprocessing.image_size
    linear = linearized_copy(model)
    masks = full_masks(prunable_weights(model))
    for sparsity in exponential_schedule(run.section.sparsity, run.synflow_iterations):
        masks = global_masks(synflow_scores(linear, masks, (3, size, size)), sparsity, masks)
        run.samples[0] += 1  # one all-ones input
    run.fit(model, masks, range(run.total_epochs))
    return run.total_epochs


METHODS: dict[str, Callable[[nn.Module, _Run], int]] = {
    "drive": _drive, "magnitude": _magnitude, "snip": _snip, "synflow": _synflow}


def prune_with(method: str, model: nn.Module, data: DataBundle, section: PruneSection, train: TrainSection, *,
               device: torch.device, seed: int, score_batches: int = SCORE_BATCHES,
               synflow_iterations: int = SYNFLOW_ITERATIONS) -> PruneOutcome:
    """Prune (and train) ``model`` in place with one method at ``section.sparsity``; measure it.

    ``seconds`` is the wall time of the whole method (dense training, scoring, pruning and every
    retraining), ``cpu_seconds`` the CPU time this process spent on it (steadier than wall time on a
    shared machine); accuracy and sparsity are measured afterwards, sparsity by counting zeros.
    """
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")
    seed_everything(seed)
    model.to(device)
    for p in model.parameters():
        p.requires_grad_(True)  # pruning retrains the whole model
    run = _Run(data, section, train, device, seed, score_batches, synflow_iterations)
    started, cpu_started = time.perf_counter(), time.process_time()
    epochs = METHODS[method](model, run)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    zeros, total = weight_sparsity(model)
    outcome = PruneOutcome(
        method=method, sparsity_target=section.sparsity, sparsity_reached=zeros / total,
        accuracy=_accuracy(model, data.test, data, device), seconds=seconds,
        cpu_seconds=cpu_seconds, epochs=epochs, samples_processed=run.samples[0],
        prunable_weights=total, zero_weights=zeros,
        val_accuracy=_accuracy(model, data.val, data, device),
        layer_sparsity=layer_sparsity(model))
    log.info("%s: sparsity %.4f, test accuracy %.4f, %.1f s, %d epochs", method, outcome.sparsity_reached,
             outcome.accuracy, seconds, epochs)
    return outcome


def prune_model(model: nn.Module, data: DataBundle, section: PruneSection, train: TrainSection, *,
                device: torch.device, seed: int, score_batches: int = SCORE_BATCHES,
                synflow_iterations: int = SYNFLOW_ITERATIONS) -> tuple[nn.Module, PruneResult]:
    """Prune ``model`` in place with ``section.method``; run ``section.baselines`` on copies of the
    same starting weights. Returns the pruned model and the figures of every method.

    The result's ``checkpoint`` and ``compressed_bytes`` stay None: they describe files the caller
    writes (see `compressed_size`).
    """
    model.to(device)
    accuracy_before = _accuracy(model, data.test, data, device)
    start = copy.deepcopy(model)
    options = dict(device=device, seed=seed, score_batches=score_batches, synflow_iterations=synflow_iterations)
    outcome = prune_with(section.method, model, data, section, train, **options)
    baselines = tuple(prune_with(method, copy.deepcopy(start), data, section, train, **options)
                      for method in dict.fromkeys(section.baselines) if method != section.method)
    return model, PruneResult(method=section.method, target=section.target, accuracy_before=accuracy_before,
                              outcome=outcome, baselines=baselines)


def _accuracy(model: nn.Module, images, data: DataBundle, device: torch.device) -> float:
    return top1_accuracy(model, unaugmented(images, data.preprocessing, device))


def compressed_size(path: str | Path) -> int:
    """Bytes of ``path`` after raw deflate at level 9 (what a zip of it holds): zeros compress."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            size += len(compressor.compress(chunk))
    return size + len(compressor.flush())
