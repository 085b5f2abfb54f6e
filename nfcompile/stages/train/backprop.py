"""The baselines NeuroFlux is measured against, under the same budget and the same profiler:
end-to-end backprop at the largest batch that fits, and backprop with gradient checkpointing."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from nfcompile.core.bytesize import format_bytes
from nfcompile.core.log import get_logger
from nfcompile.core.memory import fit_memory
from nfcompile.core.repro import derived_seed
from nfcompile.core.results import METER_SCAN, BlockResult, Plan, TrainOutcome, TrainResult
from nfcompile.learning import (BestWeights, CheckpointedUnits, backprop_step, fit, make_optimizer, set_lr,
                                top1_accuracy, warmed_up_schedule)
from nfcompile.data.batches import ORDER_BYTES_PER_SAMPLE, Augment
from nfcompile.learning.parallel import (data_parallel, global_batch, rank_generators, shard, synced_evaluate,
                                        with_gradient_buckets)
from nfcompile.data.datasets import DataBundle
from nfcompile.errors import BudgetError
from nfcompile.models import MultiExitNet, UnitNet
from nfcompile.recipe.schema import AugmentSection, BudgetSection, ModelSection, TrainSection
from nfcompile.data.sources import ImageInput
from nfcompile.stages.train.budget import (block_meter, check_budget, log_block_memory, memory_cap,
                                          with_memory)
from nfcompile.stages.train.checkpoint import restore_single_exit, save_single_exit

log = get_logger(__name__)


def backprop_batch_size(plan: Plan, train: TrainSection, model: nn.Module) -> tuple[int, int]:
    """(batch size, predicted peak): the recipe's batch, or the largest the budget allows."""
    checkpointing = train.backprop.checkpointing
    measurements = plan.checkpointing_measurements if checkpointing else plan.backprop_measurements
    memory = with_gradient_buckets(fit_memory(list(measurements)), model)  # several processes: DDP's buckets
    batch = train.batch_size or (plan.checkpointing_batch_size if checkpointing else plan.backprop_batch_size)
    if batch == 0:
        kind = "backprop with gradient checkpointing" if checkpointing else "backprop"
        raise BudgetError(f"{kind} does not fit budget.memory {format_bytes(plan.budget_bytes)} even at batch "
                          f"size 1 (needs {format_bytes(memory.predicted(1))})",
                          hint="raise budget.memory, or train with train.method: neuroflux")
    # On CPU the epoch's sample order is held in the budget's memory beside the step (as the plan counts it).
    held = plan.train_samples * ORDER_BYTES_PER_SAMPLE if plan.device.startswith("cpu") else 0
    return batch, memory.predicted(batch) + held


def train_backprop(unit_net: UnitNet, plan: Plan, data: DataBundle, *, model: ModelSection, train: TrainSection,
                   augment: AugmentSection, budget: BudgetSection, device: torch.device, seed: int, out_dir: Path,
                   resume: bool, fingerprint: str) -> TrainOutcome:
    checkpoint = out_dir / "checkpoint.pt"
    net = MultiExitNet.single_exit(unit_net)
    num_classes = data.info.num_classes
    finished = restore_single_exit(checkpoint, fingerprint, net) if resume else None
    if finished is not None:
        return TrainOutcome(net, finished)
    batch, predicted = backprop_batch_size(plan, train, unit_net)
    evaluation_batch = plan.baseline_evaluation_batch(train.backprop.checkpointing, batch)
    method = "backprop+checkpointing" if train.backprop.checkpointing else "backprop"
    trainee = CheckpointedUnits(unit_net.units, unit_net.classifier) if train.backprop.checkpointing else unit_net
    trainee.to(device)
    optimizer = make_optimizer(trainee.parameters(), train, global_batch(batch))
    stepped = data_parallel(trainee, device)  # several processes: gradients all-reduced
    train_in = shard(ImageInput(data.train, data.preprocessing, Augment(augment.flip, augment.crop_padding), device),
                     train=True)
    val_in = shard(ImageInput(data.monitor, data.preprocessing, Augment(), device), train=False)
    generator = torch.Generator().manual_seed(derived_seed(seed, "backprop"))
    torch.manual_seed(derived_seed(seed, "backprop-torch"))

    def step(x: torch.Tensor, y: torch.Tensor, lr: float) -> tuple[float]:
        set_lr(optimizer, lr)
        return (backprop_step(stepped, x, y, optimizer),)

    best = BestWeights([unit_net], device, out_dir)
    run_started = time.perf_counter()
    with memory_cap(device, plan.budget_bytes, budget.enforce), block_meter(device, [trainee], data) as meter:
        started = time.perf_counter()  # the block's seconds leave the meter's scan out, as NeuroFlux's do
        try:
            outcome = fit(step, train_in, batch_size=batch, epochs=range(train.epochs),
                          lr_at=warmed_up_schedule(train, samples=len(train_in), batch=batch,
                                                   lr_batch=global_batch(batch), epochs=train.epochs),
                          generator_for=rank_generators(lambda epoch: generator, seed, "backprop"),
                          train_modules=[trainee],
                          evaluate=synced_evaluate(lambda: (top1_accuracy(unit_net, val_in, evaluation_batch),),
                                                   [unit_net], val_in), patience=train.patience,
                          keep_best=best, label=f"{method} (batch {batch})", log_as=method,
                          exit_names=[f"exit_{net.exit_units[-1]:02d}"])
        finally:
            best.close()
    best_accuracy = outcome.best.val_accuracy[0]
    last = net.exit_units[-1]
    block = with_memory(BlockResult(
        index=0, units=tuple(range(last + 1)), batch_size=batch, trained=True, stop_reason=outcome.stop_reason,
        epochs_run=len(outcome.history), best_val_accuracy=(best_accuracy,), measured_peak_bytes=None,
        predicted_peak_bytes=predicted, budget_bytes=plan.budget_bytes, seconds=time.perf_counter() - started,
        cache_placement="none", cache_bytes=0, cache_seconds=0.0, history=tuple(outcome.history),
        time_spent={**outcome.time_spent, METER_SCAN: meter.scan_seconds}), meter.reading)
    log.info("%s: %d epoch(s), best accuracy %.4f, measured peak %s of %s (predicted %s)", method,
             len(outcome.history), best_accuracy, format_bytes(block.measured_peak_bytes),
             format_bytes(plan.budget_bytes), format_bytes(predicted))
    log_block_memory(method, block)
    check_budget(block, f"{method} at batch {batch}", enforce=budget.enforce)
    result = TrainResult(method=method, device=str(device), budget_bytes=plan.budget_bytes,
                         checkpoint="checkpoint.pt", blocks=(block,), exit_units=(last,),
                         exit_val_accuracy=(best_accuracy,), seconds=time.perf_counter() - run_started,
                         details={"batch_size": batch, "evaluation_batch_size": evaluation_batch})
    save_single_exit(checkpoint, fingerprint, net, model, num_classes, result)
    return TrainOutcome(net, result)
