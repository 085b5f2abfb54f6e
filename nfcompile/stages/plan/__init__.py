"""Plan stage: profile every unit with its head, choose head widths, partition into blocks under the
budget, place the activation caches and the slim heads' features, and size the backprop baselines with
the same profiler."""

from __future__ import annotations

import copy
import functools
import math
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from nfcompile.core.bytesize import format_bytes
from nfcompile.core.device import free_memory
from nfcompile.core.log import get_logger, progress_bar
from nfcompile.core.memory import MemoryFit, warm_up_libraries
from nfcompile.core.results import BlockPlan, Plan, UnitProfile
from nfcompile.learning import EVAL_BATCH_SIZE, CheckpointedUnits
from nfcompile.errors import BudgetError, RecipeError
from nfcompile.learning.parallel import gradient_bucket_bytes, with_gradient_buckets
from nfcompile.data.batches import ORDER_BYTES_PER_SAMPLE, Augment, feature_augment
from nfcompile.data.datasets import ImageSet
from nfcompile.data.preprocess import Preprocessing
from nfcompile.data.sources import CACHE_DTYPE_BYTES, ActivationCache, CachedInput, ImageInput, RecomputedInput
from nfcompile.models import AuxHead, UnitNet, block_exits, choose_head_filters, unit_shapes_for
from nfcompile.models.heads import head_pool_kernel
from nfcompile.recipe.schema import AugmentSection, BudgetSection, TrainSection
from nfcompile.stages.plan.partition import (block_activations, block_max_batch, block_peak, host_cache_limit,
                                            partition_blocks, place_cache)
from nfcompile.stages.plan.profile import (largest_evaluation_batch, measure_block_step, measure_evaluation,
                                          profile_backprop_step, profile_input_fetch, profile_local_step,
                                          writing_pass_batch)
from nfcompile.stages.plan.profile_cache import ProfileCache
from nfcompile.stages.plan.slim_phase import plan_slim_phase

log = get_logger(__name__)

# Batch sizes are planned against this share of the budget; the whole budget stays the enforced
# limit. A plan that fills the budget to the byte overshot it by 0.1% in one benchmark run
# (allocation order differs slightly between profiling a unit and training its block).
PLANNING_SHARE = 0.98
VERIFY_ATTEMPTS = 4  # whole-block measurements per block before the plan gives up on a batch


def resolve_budget(section: BudgetSection, device: torch.device) -> tuple[int, str]:
    if section.memory_bytes is not None:
        return section.memory_bytes, "recipe"
    free = free_memory(device)
    budget = int(free.bytes * section.auto_fraction)
    return budget, (f"auto: {section.auto_fraction:.0%} of {format_bytes(free.bytes)} free "
                    f"({free.source})")


def saved_activation_bytes_per_sample(unit: nn.Module, in_shape: tuple[int, ...], device: torch.device) -> int:
    """Bytes autograd saves for backward per sample in ``unit``: measured with saved-tensor hooks at
    two batch sizes (the difference removes the weights, which are saved too)."""
    def saved_at(batch: int) -> int:
        seen: dict[int, int] = {}
        alive: list[torch.Tensor] = []  # held while measuring, so no address is reused meanwhile

        def pack(tensor: torch.Tensor) -> int:
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
            alive.append(tensor)
            # Never backpropagated: the graph keeps a size, not the tensor. Returning the tensor itself
            # ties it to its own graph in a cycle through C++ that no garbage collector frees.
            return storage.nbytes()

        # A copy: the unit itself stays where it is (moved to a GPU here, every later unit sat there
        # through the blocks before its own, counted by their meters and planned by none) and keeps its
        # BatchNorm statistics.
        module = copy.deepcopy(unit).to(device).train()
        x = torch.randn((batch, *in_shape), device=device, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(x)
        alive.clear()  # the graph holds `pack` too: a list it reaches must not keep the tensors alive
        return sum(seen.values())

    return max(1, (saved_at(4) - saved_at(2)) // 2)


def input_source_for(unit: int, in_shape: tuple[int, ...], count: int, *, image_size: int,
                     image_augment: Augment, section, device: torch.device):
    """A stand-in for what feeds ``unit`` when it starts a block (random values, same fetch path):
    the images for unit 0, a device-resident activation cache for the others."""
    labels = torch.zeros(count, dtype=torch.int64)
    if unit == 0:
        images = ImageSet(torch.randint(0, 256, (count, *in_shape), dtype=torch.uint8), labels)
        return ImageInput(images, Preprocessing(image_size, (0.5,) * 3, (0.5,) * 3), image_augment, device)
    cache = ActivationCache("device", count, in_shape, section.cache.dtype, device=device)
    cache.write(0, torch.randn((count, *in_shape), device=device))
    augment = feature_augment(image_augment, image_size, in_shape[-1], section.cache.feature_augment)
    return CachedInput(cache, labels, augment)


def plan_training(unit_net: UnitNet, num_classes: int, *, image_size: int, train_samples: int,
                  val_samples: int, budget: BudgetSection, train: TrainSection, augment: AugmentSection,
                  device: torch.device, cache: ProfileCache | None = None) -> Plan:
    """``cache``: where measured profiles are reused (`ProfileCache.for_recipe`); None measures all."""
    section = train.neuroflux
    cache = cache or ProfileCache(None)
    warm_up_libraries(device)  # their workspaces are the process's: in no step's reading
    budget_bytes, budget_source = resolve_budget(budget, device)
    usable = int(budget_bytes * PLANNING_SHARE)
    if section.cache.placement == "host" and device.type == "cpu":
        raise RecipeError("on CPU the host RAM is the training device's memory; use device (counted against "
                          "the budget) or disk", field="train.neuroflux.cache.placement")
    shapes = unit_shapes_for(unit_net, image_size)
    cap = min(section.max_batch_size, train_samples)
    image_augment = Augment(flip=augment.flip, shift=augment.crop_padding)
    profiles: list[UnitProfile] = []
    fits: list[MemoryFit] = []
    with progress_bar("profile units", len(shapes)) as advance:
        for index, (unit, (in_shape, out_shape)) in enumerate(zip(unit_net.units, shapes)):
            started = time.perf_counter()
            unit_bytes = saved_activation_bytes_per_sample(unit, in_shape, device)
            filters = choose_head_filters(section.head, out_shape, unit_bytes)
            pool = head_pool_kernel(section.head, out_shape[-1])
            head = AuxHead(out_shape[0], filters, num_classes, pool=pool, depth=section.head.depth)
            fit = cache.fit("local_step", [unit, head],
                            lambda: profile_local_step(unit, head, in_shape, num_classes,
                                                       batch_sizes=section.profile_batch_sizes, budget=usable,
                                                       max_batch=cap, section=train, device=device),
                            train=train, device=device, in_shape=in_shape, num_classes=num_classes,
                            batch_sizes=section.profile_batch_sizes, budget=usable, max_batch=cap)
            fit = with_gradient_buckets(fit, unit, head)  # several processes: DDP's buckets
            fits.append(fit)
            fetch = profile_input_fetch(
                lambda n: input_source_for(index, in_shape, n, image_size=image_size, image_augment=image_augment,
                                           section=section, device=device),
                section.profile_batch_sizes, device)
            profiles.append(UnitProfile(
                index=index, name=unit_net.unit_names[index], in_shape=in_shape, out_shape=out_shape,
                params=sum(p.numel() for p in unit.parameters()), head_filters=filters,
                head_params=sum(p.numel() for p in head.parameters()), fixed_bytes=fit.fixed_bytes,
                bytes_per_sample=fit.bytes_per_sample, measurements=fit.measurements, fit_error=fit.fit_error,
                cache_bytes_per_sample=math.prod(out_shape) * CACHE_DTYPE_BYTES[section.cache.dtype],
                seconds_per_sample=fit.seconds_per_sample, fetch_bytes_per_sample=fetch,
                max_batch_size=block_max_batch([fit], usable, cap, fetch),
                state_bytes=state_bytes(unit) + state_bytes(head), head_pool=pool, head_depth=section.head.depth))
            advance(unit=profiles[-1].name)
            log.info("profiled unit %d/%d %s: head %d filters, memory %s + b x %s, alone batch %d (%.1f s)",
                     index + 1, len(shapes), profiles[-1].name, filters, format_bytes(fit.fixed_bytes),
                     format_bytes(fit.bytes_per_sample), profiles[-1].max_batch_size, time.perf_counter() - started)
    network = sum(p.state_bytes for p in profiles) + state_bytes(unit_net.classifier)
    resident = Resident(device.type, network, profiles, order_bytes=train_samples * ORDER_BYTES_PER_SAMPLE)
    _refuse_budget_below_minimum(profiles, fits, budget_bytes, resident)
    heads_of = lambda units: [AuxHead(profiles[i].out_shape[0], profiles[i].head_filters, num_classes,
                                      pool=profiles[i].head_pool, depth=profiles[i].head_depth) for i in units]
    evaluation_cap = max(1, min(EVAL_BATCH_SIZE, val_samples))
    # What evaluation reads, unaugmented: the images for unit 0, an activation cache for the others.
    stand_in = lambda unit: lambda n: input_source_for(unit, profiles[unit].in_shape, n, image_size=image_size,
                                                       image_augment=Augment(), section=section, device=device)
    blocks = _blocks_with_caches(profiles, fits, usable, train_samples, val_samples, section, device, resident,
                                 recompute_fetch=lambda first: _recompute_fetch(unit_net, first, image_size,
                                                                               image_augment, section, device),
                                 measure_block=lambda units, batch: _measure_block(
                                     cache, [unit_net.units[i] for i in units], heads_of(units),
                                     profiles[units[0]].in_shape, num_classes, batch, train=train, device=device),
                                 evaluation=lambda units, batch, allowed: _block_evaluation(
                                     _evaluation_measure(
                                         cache, [*(unit_net.units[i] for i in units), *heads_of(units)],
                                         lambda m, x: block_exits(m[:len(units)], m[len(units):], x),
                                         profiles[units[0]].in_shape, stand_in(units[0]), train=train,
                                         device=device),
                                     allowed=allowed, floor=batch, cap=evaluation_cap,
                                     batch_sizes=section.profile_batch_sizes))
    image_shape = (3, image_size, image_size)
    baselines = {}
    for kind, model in (("backprop_step", unit_net),
                        ("checkpointed_backprop_step", CheckpointedUnits(unit_net.units, unit_net.classifier))):
        baselines[kind] = cache.fit(
            kind, [model], lambda: profile_backprop_step(model, image_shape, num_classes,
                                                         batch_sizes=section.profile_batch_sizes, budget=usable,
                                                         max_batch=cap, section=train, device=device),
            train=train, device=device, in_shape=image_shape, num_classes=num_classes,
            batch_sizes=section.profile_batch_sizes, budget=usable, max_batch=cap)
        baselines[kind] = with_gradient_buckets(baselines[kind], model)  # several processes: DDP's buckets
    backprop, checkpointed = baselines["backprop_step"], baselines["checkpointed_backprop_step"]
    # Backprop holds the epoch's sample order beside its step too (on CPU, in the budget's memory).
    held = resident.order_bytes if device.type == "cpu" else 0
    bp_batch, ck_batch = backprop.max_batch(usable - held, cap), checkpointed.max_batch(usable - held, cap)
    # Both evaluate the plain network (checkpointing changes nothing without autograd): one measurement
    # per batch serves the two searches.
    evaluation = _evaluation_measure(cache, [unit_net], lambda m, x: (m[0](x),), image_shape, stand_in(0),
                                     train=train, device=device)
    bp_eval, ck_eval = (largest_evaluation_batch(evaluation, allowed=fit.predicted(batch), floor=batch,
                                                 cap=evaluation_cap, batch_sizes=section.profile_batch_sizes)
                        if batch else 0 for batch, fit in ((bp_batch, backprop), (ck_batch, checkpointed)))
    plan = Plan(
        device=str(device), budget_bytes=budget_bytes, budget_source=budget_source,
        min_budget_bytes=_minimum_budget(profiles, fits, resident)[0],
        head_policy=section.head.policy,
        units=tuple(profiles), blocks=tuple(blocks),
        backprop_batch_size=bp_batch, backprop_predicted_peak_bytes=backprop.predicted(max(bp_batch, 1)) + held,
        backprop_measurements=backprop.measurements, backprop_evaluation_batch_size=bp_eval,
        checkpointing_batch_size=ck_batch, checkpointing_evaluation_batch_size=ck_eval,
        checkpointing_predicted_peak_bytes=checkpointed.predicted(max(ck_batch, 1)) + held,
        checkpointing_measurements=checkpointed.measurements,
        train_samples=train_samples, val_samples=val_samples, network_state_bytes=network,
        accounting=resident.accounting, profiles_measured=cache.measured, profiles_reused=cache.reused)
    log.info("plan: %d units in %d blocks, batch sizes %s (evaluated at %s) under %s; backprop batch %s "
             "(evaluated at %s), checkpointed %s (%s); profiles: %s", len(profiles), len(blocks),
             [b.batch_size for b in blocks], [b.evaluation_batch for b in blocks], format_bytes(budget_bytes),
             bp_batch or "none fits", bp_eval or "-", ck_batch or "none fits", ck_eval or "-", cache.describe())
    return plan


def _block_evaluation(measure: Callable[[int], int], **search) -> tuple[int, Callable[[int], int]]:
    """A block's evaluation batch (`largest_evaluation_batch`), and its measured peak at a batch, on demand
    (the passes that fill the output cache and the slim heads' features are planned from it, at that batch
    or below; each batch is measured once)."""
    batch = largest_evaluation_batch(measure, **search)
    return batch, measure


def _evaluation_measure(cache: ProfileCache, modules: list[nn.Module], forward, in_shape: tuple[int, ...],
                        stand_in: Callable[[int], object], *, train: TrainSection,
                        device: torch.device) -> Callable[[int], int]:
    """The measured peak of evaluating ``modules`` at a batch (fetching it from ``stand_in(batch)``, the
    forward pass, the comparison with the labels), each batch measured once: what
    `largest_evaluation_batch` searches to give the validation split the largest batch within the
    training step's peak, so evaluation never sets the peak. At the training batch itself a tight
    budget made evaluation slow for nothing: backprop at batch 3 took 1.1 s per pass over 1,200
    Fashion-MNIST images where batch 32 took 0.5 s, and held 60% less than its training step
    (ResNet-18 at width 0.25, one thread)."""
    buckets = gradient_bucket_bytes(*modules)  # several processes: resident through evaluation too

    @functools.cache
    def measure(b: int) -> int:
        source = stand_in(b)  # made outside the measurement: the plan counts an input cache by itself
        return buckets + cache.peak(
            "evaluation", modules, lambda: measure_evaluation(modules, forward, source, b, section=train,
                                                              device=device),
            train=train, device=device, in_shape=in_shape, batch=b)

    return measure


def _measure_block(cache: ProfileCache, units: list[nn.Module], heads: list[nn.Module], in_shape: tuple[int, ...],
                   num_classes: int, batch: int, *, train: TrainSection, device: torch.device) -> int:
    buckets = gradient_bucket_bytes(*units, *heads)  # several processes: DDP's, as the unit fits count them
    return buckets + cache.peak(
        "block_step", [*units, *heads],
        lambda: measure_block_step(units, heads, in_shape, num_classes, batch, section=train, device=device),
        train=train, device=device, in_shape=in_shape, num_classes=num_classes, batch=batch, units=len(units))


@dataclass(frozen=True)
class Resident:
    """What else lives on the training device while a block trains, besides its own units and heads.

    CPU: host RAM is the device, and the whole network (every unit, head and the classifier) lives
    there from start to end, so the rest of it counts against every block. CUDA: a unit moves to the
    GPU when its block starts and back to the host when its block is done (its output cached), so
    nothing else of the network is on the device (placement `recompute` keeps the earlier units there:
    `_recomputing_block` counts them). Either way the best-epoch snapshot is off the device (a file
    on CPU, host RAM on CUDA) and the read-only training images are not counted (on CPU they are the
    dataset in host memory, read, never written; a batch made from them counts)."""

    device_type: str
    network_bytes: int
    profiles: list[UnitProfile]
    order_bytes: int = 0  # the epoch's shuffled sample order (int64 indices), held through the epoch

    def besides(self, units: list[int]) -> int:
        if self.device_type == "cuda":
            return 0
        return self.network_bytes - sum(self.profiles[i].state_bytes for i in units) + self.order_bytes

    @property
    def accounting(self) -> str:
        common = ("its units' and heads' weights, gradients and optimizer state, one unit's activations at a time, "
                  "preparing the batch, its input cache when that lives on the device, and with slim heads their "
                  "steps and their pooled features when those live on the device")
        if self.device_type == "cuda":
            return (f"{common}; finished blocks go back to host RAM and the best-epoch snapshot is kept there; "
                    "the pass that fills the output cache is planned to fit too")
        return (f"{common}; plus the rest of the network's weights ({format_bytes(self.network_bytes)} in all), "
                f"which live in host RAM throughout, and the epoch's shuffled sample order "
                f"({format_bytes(self.order_bytes)}); the best-epoch snapshot goes to a file; the training "
                "images are not counted; the pass that fills the output cache is planned to fit too")


def state_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def _minimum_budget(profiles: list[UnitProfile], fits: list[MemoryFit], resident: Resident) -> tuple[int, int]:
    """(what batch size 1 needs, with the planning margin; the unit that needs it)."""
    needs = [block_peak([f], 1, p.fetch_bytes_per_sample) + resident.besides([p.index])
             for f, p in zip(fits, profiles)]
    hungriest = max(range(len(needs)), key=needs.__getitem__)
    return math.ceil(needs[hungriest] / PLANNING_SHARE), hungriest


def _refuse_budget_below_minimum(profiles: list[UnitProfile], fits: list[MemoryFit], budget: int,
                                 resident: Resident) -> None:
    minimum, hungriest = _minimum_budget(profiles, fits, resident)
    if minimum > budget:
        rest = " and the rest of the network's weights" if resident.device_type == "cpu" else ""
        raise BudgetError(
            f"budget.memory {format_bytes(budget)} is below the {format_bytes(minimum)} that batch size 1 "
            f"needs for unit {profiles[hungriest].name!r} (its weights, gradients, optimizer state and head{rest}, "
            f"plus a {1 - PLANNING_SHARE:.0%} planning margin)",
            hint=f"set budget.memory to at least {math.ceil(minimum / 2**20)}MiB, or use a narrower "
            "model (model.width)")


def _recompute_fetch(unit_net: UnitNet, first: int, image_size: int, image_augment: Augment, section,
                     device: torch.device) -> tuple[int, int]:
    """For cache placement `recompute`: (resident bytes, fetch bytes per sample) of running units
    0..first-1 forward for every batch of the block that starts at ``first``."""
    earlier = [copy.deepcopy(unit_net.units[i]).to(device) for i in range(first)]
    resident = sum(t.numel() * t.element_size() for u in earlier for t in (*u.parameters(), *u.buffers()))
    per_sample = profile_input_fetch(
        lambda n: RecomputedInput(input_source_for(0, (3, image_size, image_size), n, image_size=image_size,
                                                   image_augment=image_augment, section=section, device=device),
                                  earlier),
        section.profile_batch_sizes, device)
    return resident, per_sample


def _blocks_with_caches(profiles: list[UnitProfile], fits: list[MemoryFit], budget: int, train_samples: int,
                        val_samples: int, section, device: torch.device, resident: Resident, *,
                        recompute_fetch: Callable[[int], tuple[int, int]],
                        measure_block: Callable[[list[int], int], int],
                        evaluation: Callable[[list[int], int, int], tuple[int, Callable[[int], int]]]
                        ) -> list[BlockPlan]:
    cap = min(section.max_batch_size, max(p.max_batch_size for p in profiles))
    fetch = [p.fetch_bytes_per_sample for p in profiles]
    samples = (train_samples, val_samples)
    # Grouping only needs comparable batch sizes: it plans against the budget less the whole network
    # (an upper bound of what else is resident); every block's batch is then sized exactly.
    groups = partition_blocks(fits, budget - resident.besides([]), split_ratio=section.block_split_ratio, cap=cap,
                              fetch_bytes_per_sample=fetch, max_units=section.max_units_per_block)
    host_limit = host_cache_limit(section.cache)
    blocks: list[BlockPlan] = []
    input_cache_on_device = 0
    for k, (units, _) in enumerate(groups):
        block_fits = [fits[i] for i in units]
        others = resident.besides(units)
        if section.cache.placement == "recompute":
            block, earlier, step_peak = _recomputing_block(k, units, block_fits, budget - others, cap, fetch[units[0]],
                                                           others, device, last=k == len(groups) - 1,
                                                           recompute_fetch=recompute_fetch)
            # Its evaluation runs at the training batch, within the step's peak: the features pass too, or below
            # where the features it writes would not fit beside it.
            block = _with_slim_phase(block, [profiles[i] for i in units], section, samples=samples,
                                     pass_peak=lambda batch, written: step_peak(batch) + written,
                                     resident=earlier + others, budget=budget, device=device, host_limit=host_limit)
            blocks.append(_within_budget(block, budget, section.cache.placement))
            continue
        # The cache this block reads, and the rest of the network, share the budget with its training.
        room = budget - others - input_cache_on_device
        batch = block_max_batch(block_fits, room, cap, fetch[units[0]])
        if batch:
            batch, block_bytes = _verified_batch(units, batch, block_fits, fetch[units[0]], room, measure_block)
        if batch == 0:
            raise BudgetError(f"block {k} (units {units[0]}-{units[-1]}): its input cache "
                              f"({format_bytes(input_cache_on_device)}) and the rest of the network "
                              f"({format_bytes(others)}) leave no room to train at batch size 1",
                              hint="use cache placement auto or disk, or a larger budget")
        last = k == len(groups) - 1
        evaluation_batch, evaluation_peak = evaluation(units, batch, block_bytes)
        # The pass that fills the output cache: the block's forward without heads or optimizers (so is the slim
        # heads' features pass), writing a batch of outputs in the cache's precision, beside the rest of the network
        # and the input cache. Its forward is bounded by the measured evaluation (which runs the heads too, beside
        # the optimizers' state) and by the block's weights plus the activations its training step keeps: the
        # tighter bound counts.
        written = 0 if last else profiles[units[-1]].cache_bytes_per_sample
        cache_bytes = sum(samples) * written
        weights = sum(profiles[i].state_bytes for i in units)
        forward = lambda b: min(evaluation_peak(b), weights + block_activations(block_fits, b, fetch[units[0]]))
        caching_at = lambda b: forward(b) + b * written + input_cache_on_device + others
        caching_batch, headroom = 0, 0
        if not last:
            # A cache the recipe puts on the device is there through the pass: the pass gets what it leaves.
            forced = cache_bytes if section.cache.placement == "device" else 0
            caching_batch = writing_pass_batch(caching_at, evaluation_batch, budget - forced,
                                               section.profile_batch_sizes)
            next_units = groups[k + 1][0]
            next_fits = [fits[i] for i in next_units]
            next_batch = block_max_batch(next_fits, budget - resident.besides(next_units), cap, fetch[next_units[0]])
            next_peak = block_peak(next_fits, next_batch, fetch[next_units[0]]) + resident.besides(next_units)
            # While caching, this block's weights, its input cache and the growing output cache coexist;
            # while the next block trains, its peak and the cache do.
            headroom = min(budget - next_peak, budget - caching_at(caching_batch))
        placement = place_cache(cache_bytes, device_type=device.type, requested=section.cache.placement,
                                device_headroom=headroom, host_limit=host_limit)
        on_device = placement.bytes if placement.placement == "device" else 0
        # The meter measures the caching pass too: where the output cache lives on the device, that pass can be
        # the block's peak.
        caching_peak = 0 if last else caching_at(caching_batch) + on_device
        block = BlockPlan(index=k, units=tuple(units), batch_size=batch, evaluation_batch_size=evaluation_batch,
                          predicted_peak_bytes=max(block_bytes + input_cache_on_device + others, caching_peak),
                          cache_placement=placement.placement, cache_bytes=placement.bytes,
                          other_resident_bytes=others, caching_peak_bytes=caching_peak,
                          caching_batch_size=caching_batch)
        block = _with_slim_phase(block, [profiles[i] for i in units], section, samples=samples,
                                 pass_peak=lambda batch, written: (forward(batch) + written
                                                                   + input_cache_on_device + others),
                                 resident=input_cache_on_device + others, budget=budget, device=device,
                                 host_limit=host_limit)
        blocks.append(_within_budget(block, budget, section.cache.placement))
        input_cache_on_device = on_device
    return blocks


def _within_budget(block: BlockPlan, budget: int, placement: str) -> BlockPlan:
    """``block``, refused where its predicted peak is over ``budget``: a plan that fits is a run that fits.
    Batches and automatic placements leave room by construction; a cache the recipe forces onto the device
    (train.neuroflux.cache.placement: device) may not."""
    if block.predicted_peak_bytes <= budget:
        return block
    held = [f"{what} ({format_bytes(size)})" for what, where, size in (
        ("its output cache", block.cache_placement, block.cache_bytes),
        ("its slim heads' features", block.slim_features_placement, block.slim_features_bytes)) if where == "device"]
    verb = "leave" if len(held) > 1 else "leaves"
    raise BudgetError(f"block {block.index}: {' and '.join(held) or 'its training'} on the device "
                      f"(train.neuroflux.cache.placement: {placement}) {verb} no room: "
                      f"{format_bytes(block.predicted_peak_bytes)} predicted where the plan allows "
                      f"{format_bytes(budget)}", hint="use cache placement auto or disk, or a larger budget")


def _with_slim_phase(block: BlockPlan, units: list[UnitProfile], section, *, samples: tuple[int, int],
                     pass_peak: Callable[[int, int], int], resident: int, budget: int, device: torch.device,
                     host_limit: int) -> BlockPlan:
    """``block`` with its slim heads' phase planned (`plan_slim_phase`) and counted in its peak.
    ``pass_peak``: the peak of the pass that computes the features (measured only where an exit gets a slim head);
    ``resident``: what stays on the device besides the block's units and heads."""
    train_samples, val_samples = samples
    phase = plan_slim_phase(units, section, block_batch=block.batch_size, evaluation_batch=block.evaluation_batch,
                            train_samples=train_samples, val_samples=val_samples, pass_peak=pass_peak,
                            resident=resident + sum(unit.state_bytes for unit in units),
                            planned_peak=block.predicted_peak_bytes, budget=budget, device_type=device.type,
                            host_limit=host_limit)
    return replace(block, predicted_peak_bytes=max(block.predicted_peak_bytes, phase.peak_bytes),
                   slim_features_placement=phase.placement, slim_features_bytes=phase.feature_bytes,
                   slim_peak_bytes=phase.peak_bytes, slim_features_batch=phase.features_batch)


def _verified_batch(units: list[int], batch: int, fits: list[MemoryFit], image_fetch: int, room: int,
                    measure_block: Callable[[list[int], int], int]) -> tuple[int, int]:
    """The chosen batch, checked by measuring the whole block's step there and lowered until that fits
    ``room`` too; returns (batch, the block's peak: the larger of prediction and measurement), batch 0
    where not even batch 1 fits."""
    for _ in range(VERIFY_ATTEMPTS):
        peak = max(block_peak(fits, batch, image_fetch), _block_step_peak(units, batch, fits, measure_block))
        if peak <= room:
            return batch, peak
        if batch == 1:
            return 0, peak
        batch = max(1, min(batch - 1, math.floor(batch * room / peak)))
    return 0, peak


def _block_step_peak(units: list[int], batch: int, fits: list[MemoryFit],
                     measure_block: Callable[[list[int], int], int]) -> int:
    """The measured peak of the block's step at ``batch``. A one-unit block's step is its unit's profiled
    step (the same copies, optimizer and input made inside the measured region), so where the profiler
    already measured that batch the measurement is reused rather than taken again."""
    if len(units) == 1:
        profiled = dict(fits[0].measurements).get(batch)
        if profiled is not None:
            return profiled
    return measure_block(units, batch)


def _recomputing_block(k: int, units: list[int], block_fits: list[MemoryFit], budget: int, cap: int,
                       image_fetch: int, others: int, device: torch.device, *, last: bool,
                       recompute_fetch: Callable[[int], tuple[int, int]]
                       ) -> tuple[BlockPlan, int, Callable[[int], int]]:
    """A block with no input cache: the earlier units run forward on every batch. On CUDA their weights
    stay on the device for it (on CPU they are part of the resident network already). Returns the block,
    those weights' bytes on the device, and the block's predicted peak at a batch."""
    resident, fetch = recompute_fetch(units[0]) if k else (0, image_fetch)
    if device.type != "cuda":
        resident = 0
    batch = block_max_batch(block_fits, budget - resident, cap, fetch)
    if batch == 0:
        raise BudgetError(f"block {k}: recomputing units 0-{units[0] - 1} for every batch leaves no room to "
                          "train (train.neuroflux.cache.placement: recompute)",
                          hint="use cache placement auto, or a larger budget")
    peak_at = lambda b: block_peak(block_fits, b, fetch) + resident + others
    return BlockPlan(index=k, units=tuple(units), batch_size=batch, predicted_peak_bytes=peak_at(batch),
                     cache_placement="none" if last else "recompute", cache_bytes=0,
                     other_resident_bytes=others), resident, peak_at
