"""The one epoch loop. Every training method runs through `fit` and says only what differs:
what one step does, what is evaluated after an epoch, what is kept.

- NeuroFlux, per block: the step runs every unit's local step; evaluation gives every exit of the
  block; the best epoch (judged by the block's last exit) is restored.
- Backprop: the step is one end-to-end step; the model's own exit is judged the same way.
- Fine-tuning (gradient filtering) and masked training (pruning): their steps, their hooks (masks
  re-applied after every step, pruning rounds before an epoch), no best-epoch restore.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Sequence

import torch
from torch import nn

from nfcompile.core.log import progress_bar
from nfcompile.core.results import EpochRecord
from nfcompile.core.memory import memory_phase
from nfcompile.core.tensorboard import log_scalars
from nfcompile.data.batches import batch_order
from nfcompile.learning.snapshot import BestWeights

# step(x, y, lr) -> the loss of every exit it trains (one for end-to-end training)
Step = Callable[[torch.Tensor, torch.Tensor, float], Sequence[float]]


@dataclass
class FitOutcome:
    history: list[EpochRecord]
    stop_reason: str  # "epochs" | "patience"
    best_epoch: int  # 1-based; 0 where nothing was evaluated
    steps: int  # optimizer steps taken in this call
    step_seconds: list[float]  # wall time of every step (fetch included)
    # Where the call's time went, in seconds: "batches" (preparing them: reading images or the
    # activation cache, augmentation), "steps" (forward, losses, backward, optimizer), "evaluation"
    # (every exit on the validation split after each epoch), "snapshots" (keeping and restoring the
    # best epoch's weights). On an asynchronous device part of a batch's preparation lands in steps.
    time_spent: dict[str, float] = field(default_factory=dict)

    @property
    def best(self) -> EpochRecord | None:
        return self.history[self.best_epoch - 1] if self.best_epoch else None


def fit(step: Step, source, *, batch_size: int, epochs: range, lr_at: Callable[[int], float],
        generator_for: Callable[[int], torch.Generator], train_modules: Sequence[nn.Module] = (),
        evaluate: Callable[[], Sequence[float]] | None = None, patience: int = 0,
        keep_best: BestWeights | None = None, before_epoch: Callable[[int], None] | None = None,
        after_step: Callable[[], None] | None = None,
        step_context: Callable[[int], ContextManager] | None = None, sync: Callable[[], None] | None = None,
        label: str | None = None, log_as: str | None = None, exit_names: Sequence[str] = ()) -> FitOutcome:
    """Train over ``epochs`` (a window of a longer schedule: steps count from ``epochs.start``).

    Every epoch draws its batch order, and the step's augmentation, from ``generator_for(epoch)``
    (the same generator for a whole run, or a fresh one per epoch). ``train_modules`` go to train
    mode before each epoch (``evaluate`` may switch them to eval). ``evaluate`` returns the
    accuracy of every exit trained; the last one judges the epoch: the run stops after ``patience``
    epochs without a better one (0: never early), and ``keep_best`` keeps the best epoch's weights
    and restores them at the end. ``step_context(step)`` wraps a step (memory measurement);
    ``sync`` makes step times true on asynchronous devices. ``log_as`` names the run's TensorBoard
    scalars of every epoch (loss and accuracy of every exit in ``exit_names``, learning rate).
    """
    steps_per_epoch = math.ceil(len(source) / batch_size)
    step_index = epochs.start * steps_per_epoch
    history: list[EpochRecord] = []
    step_seconds: list[float] = []
    best_metric, best_epoch, stop_reason = -math.inf, 0, "epochs"
    spent = dict.fromkeys(("batches", "steps", "evaluation", "snapshots"), 0.0)
    total = len(epochs) * steps_per_epoch
    with progress_bar(label or "train", total) as advance:
        for epoch in epochs:
            if before_epoch is not None:
                before_epoch(epoch)
            for module in train_modules:
                module.train()
            epoch_start = time.perf_counter()
            generator = generator_for(epoch)
            losses: list[float] = []
            seen = 0
            lr = lr_at(step_index)
            for indices in batch_order(len(source), batch_size, True, generator):
                lr = lr_at(step_index)
                started = time.perf_counter()
                with step_context(step_index) if step_context else contextlib.nullcontext():
                    # Fetched inside the step: preparing the batch counts against the budget.
                    with memory_phase("batch"):
                        x, y = source.fetch(indices, generator, train=True)
                    fetched = time.perf_counter()
                    step_losses = step(x, y, lr)
                    del x, y
                if sync is not None:
                    sync()
                finished = time.perf_counter()
                step_seconds.append(finished - started)
                spent["batches"] += fetched - started
                spent["steps"] += finished - fetched
                if after_step is not None:
                    after_step()
                losses = [a + b * len(indices) for a, b in
                          zip(losses or [0.0] * len(step_losses), step_losses)]
                seen += len(indices)
                step_index += 1
                advance(epoch=epoch + 1, loss=losses[-1] / seen)  # running mean over the epoch
            evaluated = time.perf_counter()
            with memory_phase("evaluation"):
                accuracy = tuple(evaluate()) if evaluate is not None else ()
            spent["evaluation"] += time.perf_counter() - evaluated
            record = EpochRecord(epoch=epoch + 1, lr=lr, train_loss=tuple(loss / max(1, seen) for loss in losses),
                                 val_accuracy=accuracy, seconds=time.perf_counter() - epoch_start)
            history.append(record)
            if log_as:
                _log_epoch(log_as, record, exit_names)
            if accuracy:
                advance(0, epoch=epoch + 1, loss=record.train_loss[-1], acc=accuracy[-1])
                if accuracy[-1] > best_metric:
                    best_metric, best_epoch = accuracy[-1], len(history)
                    if keep_best is not None:
                        kept = time.perf_counter()
                        keep_best.keep()
                        spent["snapshots"] += time.perf_counter() - kept
                elif patience and len(history) - best_epoch >= patience:
                    stop_reason = "patience"
                    break
    if keep_best is not None:
        restored = time.perf_counter()
        keep_best.restore()
        spent["snapshots"] += time.perf_counter() - restored
    return FitOutcome(history, stop_reason, best_epoch, len(step_seconds), step_seconds, spent)


def _log_epoch(prefix: str, record: EpochRecord, exit_names: Sequence[str]) -> None:
    names = list(exit_names) or [f"exit{i}" for i in range(len(record.train_loss))]
    log_scalars(prefix, record.epoch, {
        "lr": record.lr, "epoch_seconds": record.seconds,
        **{f"train_loss/{n}": v for n, v in zip(names, record.train_loss)},
        **{f"val_accuracy/{n}": v for n, v in zip(names, record.val_accuracy)}})
