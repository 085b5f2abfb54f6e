"""NeuroFlux: block-wise local learning under a memory budget.

Blocks train one after another at the batch size the plan gave them. Inside a block, for each
mini-batch and each unit: forward on the detached output of the unit before, local loss through the
unit's auxiliary head, backward at once (only one unit's graph is ever alive), step that unit's
optimizer. A finished block is restored to its best epoch, run once over the data to fill the
activation cache the next block reads, and checkpointed, so `--resume` never redoes it. With
`neuroflux.slim_heads` its exits get narrower heads first, trained on its frozen units (`slim_heads`).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from nfcompile.core import distributed as dist
from nfcompile.core.bytesize import format_bytes
from nfcompile.core.log import get_logger
from nfcompile.core.memory import memory_phase
from nfcompile.core.repro import derived_seed
from nfcompile.core.results import (HEAD_EPOCHS, METER_SCAN, NOISE_SCALE, SLIM_HEADS, BlockPlan, BlockResult,
                                    EpochRecord, Plan, TrainOutcome, TrainResult, UnitProfile)
from nfcompile.learning import (BestWeights, eval_mode, fit, frozen, make_optimizer, set_lr, top1_accuracies,
                                warmed_up_schedule)
from nfcompile.learning.noise_scale import noise_scales
from nfcompile.learning.parallel import LocalSteps, global_batch, rank_generators, shard, synced_evaluate
from nfcompile.data.batches import Augment, batch_order, feature_augment
from nfcompile.data.datasets import DataBundle
from nfcompile.models import AuxHead, MultiExitNet, UnitNet, block_exits
from nfcompile.recipe.schema import AugmentSection, BudgetSection, ModelSection, TrainSection
from nfcompile.stages.train.budget import (block_meter, check_budget, log_block_memory, memory_cap,
                                          with_memory)
from nfcompile.data.sources import ActivationCache, CachedInput, ImageInput, RecomputedInput
from nfcompile.stages.train.checkpoint import TrainCheckpoint
from nfcompile.stages.train.slim_heads import slim_block_heads

log = get_logger(__name__)

def attach_aux_heads(unit_net: UnitNet, plan: Plan, num_classes: int, seed: int) -> MultiExitNet:
    """One auxiliary head per unit, of the width the plan chose, initialized from the seed."""
    torch.manual_seed(derived_seed(seed, "heads"))
    heads = {u.index: AuxHead(u.out_shape[0], u.head_filters, num_classes, pool=u.head_pool, depth=u.head_depth)
             for u in plan.units}
    return MultiExitNet(unit_net, heads)


def train_neuroflux(unit_net: UnitNet, plan: Plan, data: DataBundle, *, model: ModelSection,
                    train: TrainSection, augment: AugmentSection, budget: BudgetSection,
                    device: torch.device, seed: int, out_dir: Path, resume: bool,
                    fingerprint: str) -> TrainOutcome:
    num_classes = data.info.num_classes
    net = attach_aux_heads(unit_net, plan, num_classes, seed)
    checkpoint = TrainCheckpoint(out_dir / "checkpoint.pt", fingerprint)
    done: list[BlockResult] = checkpoint.restore(net) if resume else []
    start = time.perf_counter()
    image_augment = Augment(flip=augment.flip, shift=augment.crop_padding)
    section = train.neuroflux
    cache_folder = out_dir / "cache"

    with memory_cap(device, plan.budget_bytes, budget.enforce):
        results = list(done)
        stalled = section.stop_stalled_blocks and _stalled(results, section.stall_delta)
        # A resumed run whose blocks had stalled trains nothing more: it needs no cache rebuilt.
        train_in, val_in = _inputs_for_block(0 if stalled else len(done), net, plan, data, image_augment, section,
                                             device, cache_folder)
        for block in plan.blocks[len(done):]:
            if stalled:
                results.append(_skipped(block, plan.budget_bytes))
                continue
            modules = [*(net.units[i] for i in block.units), *(net.heads[str(i)] for i in block.units)]
            caches = [*train_in.device_tensors(), *val_in.device_tensors()]
            # One meter over the whole block: every step, evaluation, the snapshot, slim heads and the caching pass.
            with block_meter(device, modules, data, caches) as meter:
                result = _train_block(block, net, train_in, val_in, plan=plan, train=train, device=device,
                                      seed=seed, snapshot_folder=out_dir)
                # The next block's heads start from this block's heads as its units learned from them, before
                # any slimming; done here, the checkpoint keeps them for a resumed run.
                if section.head.warm_start and block.index < len(plan.blocks) - 1:
                    _warm_start_heads(plan.blocks[block.index + 1], net, plan)
                if section.slim_heads.share is not None:
                    result = _slim_heads(block, net, result, train_in, val_in, plan=plan, train=train,
                                         device=device, seed=seed, folder=cache_folder)
                # Judged on the exits as they ship: where the blocks after this one will not train, nothing
                # will read its output cache.
                stalled = section.stop_stalled_blocks and _stalled([*results, result], section.stall_delta)
                if stalled:
                    result = replace(result, cache_placement="none", cache_bytes=0)
                elif block.index < len(plan.blocks) - 1:
                    cache_start = time.perf_counter()
                    train_in, val_in = _next_inputs(block, net, train_in, val_in, plan=plan, section=section,
                                                    image_augment=image_augment, device=device, folder=cache_folder)
                    cached = time.perf_counter() - cache_start
                    result = replace(result, cache_seconds=cached,
                                     time_spent={**result.time_spent, "caching pass": cached})
            result = with_memory(replace(result, time_spent={**result.time_spent, METER_SCAN: meter.scan_seconds}),
                                 meter.reading)
            log.info("block %d: measured peak %s of %s (predicted %s)%s", block.index,
                     format_bytes(result.measured_peak_bytes), format_bytes(plan.budget_bytes),
                     format_bytes(block.predicted_peak_bytes),
                     f", process RSS rose {format_bytes(result.rss_rise_bytes)}" if result.rss_rise_bytes else "")
            log_block_memory("neuroflux", result)
            check_budget(result, f"block {block.index} (units {block.units[0]}-{block.units[-1]}, batch "
                                 f"{result.batch_size})", enforce=budget.enforce)
            _off_device(block, net, device)
            results.append(result)
            checkpoint.save(net, model, num_classes, results)
        _close(train_in, val_in)
    with contextlib.suppress(OSError):
        cache_folder.rmdir()  # only when empty: every cache file is gone by now
    return TrainOutcome(net, _train_result(results, plan, device, time.perf_counter() - start, resumed=len(done)))


def _slim_heads(block: BlockPlan, net: MultiExitNet, result: BlockResult, train_in, val_in, *, plan: Plan,
                train: TrainSection, device: torch.device, seed: int, folder: Path) -> BlockResult:
    """neuroflux.slim_heads: the block's exits get slim heads where those do at least as well."""
    started = time.perf_counter()
    slim = slim_block_heads(block, [net.units[i] for i in block.units], [net.heads[str(i)] for i in block.units],
                            train_in, val_in, accuracy=result.best_val_accuracy, local=_local(train), plan=plan,
                            device=device, seed=seed, folder=folder, label=_label(block, plan, result.batch_size))
    for unit, head in zip(block.units, slim.heads):
        replaced = net.heads[str(unit)]
        net.heads[str(unit)] = head
        if replaced is not head and device.type == "cuda":
            replaced.to("cpu")  # no longer the net's: `_off_device` would leave it on the GPU
    seconds = time.perf_counter() - started
    return replace(result, best_val_accuracy=slim.accuracy, seconds=result.seconds + seconds,
                   time_spent={**result.time_spent, SLIM_HEADS: seconds},
                   slim_head_filters=tuple(h.filters if s else 0 for h, s in zip(slim.heads, slim.slimmed)))


def _local(train: TrainSection) -> TrainSection:
    """NeuroFlux's own rate: the shared train.lr times neuroflux.lr_scale."""
    return train.model_copy(update={"lr": train.lr * train.neuroflux.lr_scale})


def _label(block: BlockPlan, plan: Plan, batch: int) -> str:
    return f"block {block.index + 1}/{len(plan.blocks)} (units {block.units[0]}-{block.units[-1]}, batch {batch})"


def block_epochs(train: TrainSection, index: int) -> int:
    """The epochs block ``index`` trains: train.neuroflux.block_epochs where it names the block, else
    train.epochs, which caps both (a run shortened with train.epochs is shortened everywhere)."""
    named = train.neuroflux.block_epochs
    return min(named[index], train.epochs) if index < len(named) else train.epochs


def _warm_start_heads(block: BlockPlan, net: MultiExitNet, plan: Plan) -> list[int]:
    """Start the block's heads from the previous block's last head (trained, its best epoch restored)
    wherever the unit's output shape and the head's structure are the same; returns the units whose
    heads were. A random head first has to relearn what the features already give: on the benchmarks'
    Fashion-MNIST ResNet-18 every deeper block's first epoch began 14-22 points below the previous block's
    best, and its exits were still climbing at the last epoch. Only a residual unit keeps its input's
    channels meaningful; a plain (VGG) unit's fresh convolution mixes them anew, and copying the matching
    filters of differently wide heads there lowered VGG's best exit on all three seeds (ad hoc, moderate
    budget: 0.803/0.810/0.794 against 0.816/0.815/0.805)."""
    previous = block.units[0] - 1
    if previous < 0:
        return []
    source = plan.units[previous]
    started = [u for u in block.units if _same_head(plan.units[u], source)]
    for unit in started:
        net.heads[str(unit)].load_state_dict(net.heads[str(previous)].state_dict())
    if started:
        log.debug("block %d: heads of unit(s) %s start from unit %d's trained head", block.index, started, previous)
    return started


def _same_head(a: UnitProfile, b: UnitProfile) -> bool:
    return (a.out_shape, a.head_filters, a.head_pool, a.head_depth) == (b.out_shape, b.head_filters, b.head_pool,
                                                                        b.head_depth)


def _off_device(block: BlockPlan, net: MultiExitNet, device: torch.device) -> None:
    """On CUDA a finished block goes back to host RAM (the plan counts nothing of it on the GPU), except
    its units where later blocks recompute through them: the plan counts those units, not their heads."""
    if device.type != "cuda":
        return
    for unit in block.units:
        net.heads[str(unit)].to("cpu")
        if block.cache_placement != "recompute":
            net.units[unit].to("cpu")


# --------------------------------------------------------------------------- one block


def _train_block(block: BlockPlan, net: MultiExitNet, train_in, val_in, *, plan: Plan, train: TrainSection,
                 device: torch.device, seed: int, snapshot_folder: Path) -> BlockResult:
    units = [net.units[i].to(device) for i in block.units]
    heads = [net.heads[str(i)].to(device) for i in block.units]
    started = time.perf_counter()
    batch, noise_scale, spent_before = block.batch_size, None, {}
    if train.neuroflux.batch_policy == "noise_scale":
        batch, noise_scale = _noise_scale_batch(block, units, heads, train_in, seed)
        spent_before[NOISE_SCALE] = time.perf_counter() - started
    local = _local(train)
    optimizers = [make_optimizer([*u.parameters(), *h.parameters()], local, global_batch(batch))
                  for u, h in zip(units, heads)]
    epochs = block_epochs(train, block.index)
    generator = torch.Generator().manual_seed(derived_seed(seed, "block", block.index))
    torch.manual_seed(derived_seed(seed, "block-torch", block.index))

    local_steps = LocalSteps(units, heads, device)
    step = _unit_by_unit(local_steps, optimizers)

    def evaluate() -> list[float]:
        with eval_mode(*units, *heads):
            return top1_accuracies(lambda x: block_exits(units, heads, x), val_in, block.evaluation_batch)

    evaluate_synced = synced_evaluate(evaluate, [*units, *heads], val_in)
    generator_for = rank_generators(lambda epoch: generator, seed, "block", block.index)
    label = _label(block, plan, batch)
    best = BestWeights([*units, *heads], device, snapshot_folder)
    try:
        # The block is judged by its last unit: that is what the next block learns from.
        outcome = fit(step, train_in, batch_size=batch, epochs=range(epochs),
                      lr_at=warmed_up_schedule(local, samples=len(train_in), batch=batch,
                                               lr_batch=global_batch(batch), epochs=epochs),
                      generator_for=generator_for, train_modules=[*units, *heads], evaluate=evaluate_synced,
                      patience=train.patience, keep_best=best, label=label, log_as=f"block{block.index}",
                      exit_names=_exit_names(block))
    finally:
        local_steps.close()
        best.close()
    accuracy, history, spent = outcome.best.val_accuracy, list(outcome.history), {**spent_before, **outcome.time_spent}
    log.info("%s: %d epoch(s) (%s), best exit accuracy %.4f at epoch %d", label, len(outcome.history),
             outcome.stop_reason, max(accuracy), outcome.best_epoch)
    if train.neuroflux.head_epochs:
        optimizers.clear()  # the units' optimizer state is done with: its memory goes before the heads' epochs
        heads_started = time.perf_counter()
        accuracy, more = _train_heads(block, units, heads, train_in, evaluate_synced, before=accuracy, batch=batch,
                                      local=local, first_epoch=len(history), generator_for=generator_for,
                                      device=device, snapshot_folder=snapshot_folder, label=label)
        history += more
        spent[HEAD_EPOCHS] = time.perf_counter() - heads_started
    return BlockResult(index=block.index, units=block.units, batch_size=batch, trained=True,
                       stop_reason=outcome.stop_reason, epochs_run=len(outcome.history),
                       best_val_accuracy=accuracy, measured_peak_bytes=None,
                       predicted_peak_bytes=block.predicted_peak_bytes, budget_bytes=plan.budget_bytes,
                       seconds=time.perf_counter() - started, cache_placement=block.cache_placement,
                       cache_bytes=block.cache_bytes, cache_seconds=0.0, history=tuple(history),
                       time_spent=spent, noise_scale=noise_scale)


def _unit_by_unit(local_steps: LocalSteps, optimizers: list[torch.optim.Optimizer]):
    """A block's step: every unit's local step in turn, each on the detached output of the one before."""
    def step(h: torch.Tensor, y: torch.Tensor, lr: float) -> list[float]:
        losses = []
        for local_step, optimizer in zip(local_steps.steps, optimizers):
            set_lr(optimizer, lr)
            h, loss = local_step(h, y, optimizer)
            losses.append(loss)
        return losses

    return step


def _train_heads(block: BlockPlan, units: list[nn.Module], heads: list[nn.Module], train_in, evaluate, *,
                 before: tuple[float, ...], batch: int, local: TrainSection, first_epoch: int, generator_for,
                 device: torch.device, snapshot_folder: Path,
                 label: str) -> tuple[tuple[float, ...], list[EpochRecord]]:
    """neuroflux.head_epochs: the block's heads trained further on its units frozen, each head's step
    the NeuroFlux local step through a unit that keeps no graph, on a schedule of their own (warm-up
    to the block's peak rate, then down). ``before``: every exit's accuracy now. A head keeps its new
    weights where its exit's last accuracy is at least that, else gets its old ones back. Returns every
    exit's accuracy as kept, and the epochs' records (numbered on from ``first_epoch``, the block's
    epochs so far; the first one's seconds include the snapshots and optimizers made before it)."""
    started = time.perf_counter()
    epochs = local.neuroflux.head_epochs
    previous = [BestWeights([head], device, snapshot_folder) for head in heads]
    try:
        for snapshot in previous:
            snapshot.keep()
        optimizers = [make_optimizer(head.parameters(), local, global_batch(batch)) for head in heads]
        with frozen(units):
            local_steps = LocalSteps(units, heads, device)
            prelude = time.perf_counter() - started
            try:
                outcome = fit(_unit_by_unit(local_steps, optimizers), train_in, batch_size=batch,
                              epochs=range(first_epoch, first_epoch + epochs),
                              lr_at=warmed_up_schedule(local, samples=len(train_in), batch=batch,
                                                       lr_batch=global_batch(batch), epochs=epochs,
                                                       first_epoch=first_epoch),
                              generator_for=generator_for, train_modules=heads, evaluate=evaluate,
                              label=f"{label}, heads", log_as=f"block{block.index}", exit_names=_exit_names(block))
            finally:
                local_steps.close()
        kept, renewed = [], 0
        for snapshot, old, new in zip(previous, before, outcome.history[-1].val_accuracy):
            if new < old:
                snapshot.restore()
            renewed += new >= old
            kept.append(max(old, new))
    finally:
        for snapshot in previous:  # a kept head's, or all where training failed: no file stays behind
            snapshot.close()
    log.info("%s: %d head epoch(s), exits %s -> %s (%d head(s) kept their new weights)", label, epochs,
             " ".join(f"{a:.4f}" for a in before), " ".join(f"{a:.4f}" for a in kept), renewed)
    first = replace(outcome.history[0], seconds=outcome.history[0].seconds + prelude)
    return tuple(kept), [first, *outcome.history[1:]]


def _exit_names(block: BlockPlan) -> list[str]:
    return [f"exit_{u:02d}" for u in block.units]


# The noise scale is estimated on this many of the block's largest batches, each split into this many
# micro-batches: on the benchmarks' Fashion-MNIST VGG-16 8 batches gave every unit's estimate within 16%
# (most within 10%) of what 16 gave (ad hoc, one seed), at a quarter of an epoch of 2,000 images per unit.
NOISE_SCALE_BATCHES = 8
NOISE_SCALE_MICRO_BATCHES = 4
SMALLEST_BATCH = 2  # BatchNorm's batch statistics need two samples


def _noise_scale_batch(block: BlockPlan, units: list[nn.Module], heads: list[nn.Module], train_in,
                       seed: int) -> tuple[int, float | None]:
    """The block's batch under batch_policy noise_scale: the plan's (the largest that fits), lowered to
    the smallest noise scale of its units (global, over every process); the noise scale measured."""
    # At most the (per-process) training set: every process's shard is padded to the same length.
    probe = min(block.batch_size, len(train_in))
    if probe < SMALLEST_BATCH * NOISE_SCALE_MICRO_BATCHES:
        return block.batch_size, None  # too small to split, and far below any noise scale seen
    generator = torch.Generator().manual_seed(derived_seed(seed, "noise-scale", block.index))
    scales = noise_scales(units, heads, train_in, batch=probe, batches=NOISE_SCALE_BATCHES,
                          micro_batches=NOISE_SCALE_MICRO_BATCHES, generator=generator)
    smallest = min(scales)
    if not math.isfinite(smallest):
        log.info("block %d: gradient noise scale not measurable (signal below noise); batch %d kept",
                 block.index, block.batch_size)
        return block.batch_size, None
    batch = max(SMALLEST_BATCH, min(block.batch_size, int(smallest) // dist.world_size()))
    log.info("block %d: gradient noise scale %s per unit: batch %d (largest that fits %d)", block.index,
             "/".join(f"{s:.0f}" for s in scales), batch, block.batch_size)
    return batch, smallest


# --------------------------------------------------------------------------- caches


@torch.no_grad()
def _fill_cache(units: list[nn.Module], source, cache: ActivationCache, batch: int) -> None:
    for m in units:
        m.eval()
    start = 0
    for indices in batch_order(len(source), batch, False, None):
        h, _ = source.fetch(indices, None, train=False)
        for unit in units:
            h = unit(h)
        cache.write(start, h)
        start += len(indices)


def _cache_block_outputs(block: BlockPlan, net: MultiExitNet, train_in, val_in, *, plan: Plan, section,
                         image_augment: Augment, device: torch.device, folder: Path):
    units = [net.units[i] for i in block.units]
    out_shape = plan.units[block.units[-1]].out_shape
    caches = []
    with memory_phase("caching pass"):
        for name, source in (("train", train_in), ("val", val_in)):
            with memory_phase("activation cache (being filled)"):
                cache = ActivationCache(block.cache_placement, len(source), out_shape, section.cache.dtype,
                                        device=device, folder=folder, name=f"block{block.index}.{name}")
            _fill_cache(units, source, cache, block.caching_batch)
            caches.append(cache)
    augment = feature_augment(image_augment, plan.units[0].in_shape[-1], out_shape[-1], section.cache.feature_augment)
    train_cache, val_cache = caches
    return CachedInput(train_cache, train_in.labels, augment), CachedInput(val_cache, val_in.labels, Augment())


def _next_inputs(block: BlockPlan, net: MultiExitNet, train_in, val_in, *, plan: Plan, section,
                 image_augment: Augment, device: torch.device, folder: Path):
    """What the block after ``block`` reads: a cache of its outputs, or (placement `recompute`) its
    units run again on every batch. Returns (train input, validation input)."""
    if block.cache_placement == "recompute":
        units = [net.units[i] for i in block.units]
        return RecomputedInput(train_in, units), RecomputedInput(val_in, units)
    next_train, next_val = _cache_block_outputs(block, net, train_in, val_in, plan=plan, section=section,
                                                image_augment=image_augment, device=device, folder=folder)
    _close(train_in, val_in)
    return next_train, next_val


def _inputs_for_block(index: int, net: MultiExitNet, plan: Plan, data: DataBundle, image_augment: Augment,
                      section, device: torch.device, folder: Path):
    """Block 0 reads images. A resumed run rebuilds the cache its next block reads by replaying the
    finished blocks' caching passes in order (same units, same dtype rounding at each boundary), so
    it reads exactly what the uninterrupted run would have."""
    # Several processes: each rank reads (and caches, block after block) only its own shard.
    train_in = shard(ImageInput(data.train, data.preprocessing, image_augment, device), train=True)
    val_in = shard(ImageInput(data.monitor, data.preprocessing, Augment(), device), train=False)
    started = time.perf_counter()
    for block in plan.blocks[:index]:
        for unit in block.units:
            net.units[unit].to(device)
        train_in, val_in = _next_inputs(block, net, train_in, val_in, plan=plan, section=section,
                                        image_augment=image_augment, device=device, folder=folder)
        _off_device(block, net, device)
    if index:
        log.info("resumed after block %d: rebuilt its cache (%s) in %.1f s", index - 1,
                 plan.blocks[index - 1].cache_placement, time.perf_counter() - started)
    return train_in, val_in


def _close(*inputs) -> None:
    for source in inputs:
        if isinstance(source, CachedInput):
            source.cache.close()


# --------------------------------------------------------------------------- bookkeeping


def _stalled(results: list[BlockResult], delta: float) -> bool:
    """True once the newest trained block's best exit fails to beat every earlier exit by ``delta``."""
    trained = [r for r in results if r.trained]
    if len(trained) < 2:
        return False
    earlier = max(max(r.best_val_accuracy) for r in trained[:-1])
    return max(trained[-1].best_val_accuracy) < earlier + delta


def _skipped(block: BlockPlan, budget: int) -> BlockResult:
    return BlockResult(index=block.index, units=block.units, batch_size=block.batch_size, trained=False,
                       stop_reason="skipped: exits stopped improving", epochs_run=0, best_val_accuracy=(),
                       measured_peak_bytes=None, predicted_peak_bytes=block.predicted_peak_bytes,
                       budget_bytes=budget, seconds=0.0, cache_placement="none", cache_bytes=0, cache_seconds=0.0)


def _train_result(results: list[BlockResult], plan: Plan, device: torch.device, seconds: float, *,
                  resumed: int) -> TrainResult:
    exit_units, accuracy = [], []
    for result in results:
        if result.trained:
            exit_units.extend(result.units)
            accuracy.extend(result.best_val_accuracy)
    return TrainResult(method="neuroflux", device=str(device), budget_bytes=plan.budget_bytes,
                       checkpoint="checkpoint.pt", blocks=tuple(results), exit_units=tuple(exit_units),
                       exit_val_accuracy=tuple(accuracy), seconds=seconds,
                       details={"head_filters": [u.head_filters for u in plan.units],
                                "resumed_blocks": resumed})
