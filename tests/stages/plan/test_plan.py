"""Profiler, partitioner and plan: measured, not computed; blocks fit the budget."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from rich.console import Console

from nfcompile.core.memory import PeakMeter, fit_memory
from nfcompile.data.batches import Augment
from nfcompile.data.sources import ImageInput
from nfcompile.learning import backprop_step, eval_mode, local_step, make_optimizer, top1_accuracies
from nfcompile.errors import BudgetError
from nfcompile.present import plan_table
from nfcompile.models import AuxHead
from nfcompile.core.results import UnitProfile
from nfcompile.recipe.schema import AugmentSection, BudgetSection, HeadSection, NeuroFluxSection, TrainSection
from nfcompile.stages.plan import PLANNING_SHARE, _verified_batch, plan_training, saved_activation_bytes_per_sample
from nfcompile.stages.plan.partition import block_max_batch, block_peak, partition_blocks, place_cache
from nfcompile.models import block_exits
from nfcompile.stages.plan.slim_phase import plan_slim_phase, slim_batch
from nfcompile.stages.plan.profile import (_create_optimizer_state, largest_evaluation_batch, measure_block_step,
                                          next_measurement, profile_local_step, writing_pass_batch)

from conftest import TINY_CLASSES, TINY_SIZE, make_tiny_data, make_tiny_unit_net

CPU = torch.device("cpu")


def _measure(unit, head, in_shape, batch):
    optimizer = make_optimizer([*unit.parameters(), *head.parameters()], TrainSection(), batch)
    meter = PeakMeter(CPU, [unit, head], [optimizer])
    for _ in range(2):
        with meter.step():
            local_step(unit, head, torch.randn(batch, *in_shape), torch.randint(0, TINY_CLASSES, (batch,)), optimizer)
    return meter.reading.total


def _profiled_unit():
    """The tiny net's second unit with a head, and its profile under an 8 MiB budget."""
    net = make_tiny_unit_net()
    in_shape, out_shape = net.unit_shapes((3, TINY_SIZE, TINY_SIZE))[1]
    head = AuxHead(out_shape[0], 8, TINY_CLASSES)
    fit = profile_local_step(net.units[1], head, in_shape, TINY_CLASSES, batch_sizes=(4, 16), budget=8 * 2**20,
                             max_batch=512, section=TrainSection(), device=CPU)
    return net.units[1], head, in_shape, fit


def test_profile_predicts_a_batch_it_did_not_measure():
    unit, head, in_shape, fit = _profiled_unit()
    batch = fit.max_batch(8 * 2**20, 512)
    assert batch > 16 and batch not in (4, 16)
    for probe in (batch, batch // 2, 24):
        measured = _measure(unit, head, in_shape, probe)
        assert abs(fit.predicted(probe) - measured) / measured < 0.05, probe
    assert fit.predicted(batch) <= 8 * 2**20


def test_profiler_measures_until_the_budgets_batch_is_backed_by_a_measurement():
    budget, line = 10_000, (lambda b: 1000 + 100 * b)  # the largest batch that fits: 90
    small = {4: line(4), 16: line(16)}
    assert next_measurement(small, budget, 512) == 64  # at most 4x beyond the largest batch measured
    assert next_measurement({**small, 64: line(64)}, budget, 512) == 90
    # Done: a measured batch that fits lies at most 1.25x below the predicted one ...
    assert next_measurement({**small, 80: line(80)}, budget, 512) is None
    # ... also between two measurements, one over the budget: the step past it overshot (steeper there).
    bracketed = {16: 2600, 60: 7000, 100: 12_000}
    assert next_measurement(bracketed, budget, 512) == 80
    assert next_measurement({**bracketed, 80: 9800}, budget, 512) is None
    assert next_measurement({4: 20_000, 16: 30_000}, budget, 512) is None  # not even batch 1 fits


def test_a_one_unit_blocks_step_is_its_units_profiled_step_and_is_not_measured_again():
    unit, head, in_shape, fit = _profiled_unit()
    for batch, profiled in fit.measurements:  # what the reuse rests on: the two steps measure alike
        assert measure_block_step([unit], [head], in_shape, TINY_CLASSES, batch, section=TrainSection(),
                                  device=CPU) == profiled, batch
    asked = []

    def measure_block(units, batch):
        asked.append((tuple(units), batch))
        return 0

    profiled_batch, profiled_peak = fit.measurements[-1]
    assert _verified_batch([1], profiled_batch, [fit], 0, 2**30, measure_block) == \
        (profiled_batch, max(profiled_peak, block_peak([fit], profiled_batch, 0)))
    assert asked == []
    _verified_batch([1], profiled_batch - 1, [fit], 0, 2**30, measure_block)  # a batch it did not profile
    _verified_batch([1, 2], profiled_batch, [fit, fit], 0, 2**30, measure_block)  # two units: measured
    assert asked == [((1,), profiled_batch - 1), ((1, 2), profiled_batch)]


def test_profiling_leaves_the_model_unchanged():
    net = make_tiny_unit_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    in_shape, out_shape = net.unit_shapes((3, TINY_SIZE, TINY_SIZE))[0]
    profile_local_step(net.units[0], AuxHead(out_shape[0], 8, TINY_CLASSES), in_shape, TINY_CLASSES,
                       batch_sizes=(2, 8), budget=2**24, max_batch=64, section=TrainSection(), device=CPU)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_measuring_saved_activations_leaves_the_unit_where_it_was():
    """On a GPU the planner used to move every unit there in place: each later unit then sat on the
    device through the blocks before its own, counted by their meters and planned by none. The meta
    device stands in for the GPU."""
    net = make_tiny_unit_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    in_shape = net.unit_shapes((3, TINY_SIZE, TINY_SIZE))[0][0]
    saved_activation_bytes_per_sample(net.units[0], in_shape, torch.device("meta"))
    assert {p.device for p in net.parameters()} == {CPU}
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_saved_activations_grow_with_the_map():
    net = make_tiny_unit_net()
    shapes = net.unit_shapes((3, TINY_SIZE, TINY_SIZE))
    sizes = [saved_activation_bytes_per_sample(u, s[0], CPU) for u, s in zip(net.units, shapes)]
    # conv+BN+ReLU saves input, conv output and BN output: at least 3 maps' worth per sample.
    assert sizes[0] >= 4 * (3 + 8 + 8) * TINY_SIZE * TINY_SIZE
    assert sizes[0] > sizes[2]


def test_adaptive_heads_are_narrow_on_large_maps():
    section = HeadSection(policy="adaptive", filters=64, min_filters=4, memory_ratio=0.25)
    from nfcompile.models import choose_head_filters

    unit_bytes = 4 * 3 * 16 * 32 * 32  # a unit saving three 16-channel 32x32 maps
    wide_map = choose_head_filters(section, (16, 32, 32), unit_bytes)
    small_map = choose_head_filters(section, (16, 4, 4), unit_bytes)
    assert wide_map < small_map == 64
    assert choose_head_filters(HeadSection(policy="fixed", filters=24), (16, 32, 32), unit_bytes) == 24


def _fits():
    # Three units: the first activation-heavy, the last weight-heavy.
    return [fit_memory([(1, 1000 + 400), (100, 1000 + 40_000)], persistent_bytes=1000),
            fit_memory([(1, 2000 + 200), (100, 2000 + 20_000)], persistent_bytes=2000),
            fit_memory([(1, 20_000 + 20), (100, 20_000 + 2000)], persistent_bytes=20_000)]


def test_block_peak_counts_every_units_weights_but_one_step():
    fits = _fits()
    assert block_peak(fits[:2], 10) == 1000 + 2000 + max(400 * 10, 200 * 10)
    budget = 30_000
    batch = block_max_batch(fits, budget, 10_000)
    assert block_peak(fits, batch) <= budget < block_peak(fits, batch + 1)


def test_partition_splits_where_batch_sizes_differ():
    fits = _fits()
    blocks = partition_blocks(fits, 30_000, split_ratio=1.5, cap=10_000)
    assert [units for units, _ in blocks] == [[0], [1], [2]]
    assert [b for _, b in blocks] == sorted(b for _, b in blocks)  # deeper blocks, larger batches
    merged = partition_blocks(fits, 30_000, split_ratio=100.0, cap=10_000)
    assert [units for units, _ in merged] == [[0, 1, 2]]
    for units, batch in [*blocks, *merged]:
        assert block_peak([fits[i] for i in units], batch) <= 30_000


def test_partition_starts_a_block_once_it_holds_max_units():
    fits = _fits()
    merged = partition_blocks(fits, 30_000, split_ratio=100.0, cap=10_000, max_units=2)
    assert [units for units, _ in merged] == [[0, 1], [2]]
    assert partition_blocks(fits, 30_000, split_ratio=100.0, cap=10_000, max_units=None) == \
        partition_blocks(fits, 30_000, split_ratio=100.0, cap=10_000)
    single = partition_blocks(fits, 30_000, split_ratio=100.0, cap=10_000, max_units=1)
    assert [units for units, _ in single] == [[0], [1], [2]]
    for units, batch in single:  # each block alone gets its own largest batch
        assert batch == block_max_batch([fits[units[0]]], 30_000, 10_000)


def test_cache_placement_order():
    common = dict(requested="auto", host_limit=10_000)
    assert place_cache(100, device_type="cuda", device_headroom=200, **common).placement == "device"
    assert place_cache(500, device_type="cuda", device_headroom=200, **common).placement == "host"
    assert place_cache(50_000, device_type="cuda", device_headroom=200, **common).placement == "disk"
    # On CPU host RAM is the device: a cache over the headroom goes to disk, not to "host".
    assert place_cache(500, device_type="cpu", device_headroom=200, **common).placement == "disk"
    # ... and so does one within the headroom when host RAM is short.
    assert place_cache(100, device_type="cpu", device_headroom=200, requested="auto", host_limit=50).placement == "disk"
    assert place_cache(100, device_type="cpu", device_headroom=200, **common).placement == "device"
    assert place_cache(0, device_type="cpu", device_headroom=0, **common).placement == "none"


def _unit(head_filters: int, out_shape=(16, 8, 8), head_pool=2) -> UnitProfile:
    return UnitProfile(index=0, name="unit", in_shape=(8, 16, 16), out_shape=out_shape, params=1000,
                       head_filters=head_filters, head_params=500, fixed_bytes=10_000, bytes_per_sample=40_000,
                       measurements=(), fit_error=0.0, cache_bytes_per_sample=0, seconds_per_sample=0.0,
                       max_batch_size=64, head_pool=head_pool, head_depth=2)


def test_slim_heads_features_go_where_the_headroom_allows_and_count_in_the_phases_peak():
    section = NeuroFluxSection.model_validate({"slim_heads": {"share": 0.5}, "cache": {"dtype": "float32",
                                                                                       "max_host_bytes": 10**9}})
    units = [_unit(16), _unit(1)]  # a one-filter head keeps itself: no slim copy, no features
    # 16 channels of an 8x8 map pooled by 2: 16 x 4 x 4 float32 per sample, for 100 + 28 samples.
    features = 16 * 4 * 4 * 4 * 128
    # A step reads the features (float32) and keeps the slim head's maps (3 per conv, 2 convs of 8 filters)
    # and their gradients: 7,168 bytes a sample, at the batch the block's step freed (8 x 40,000 // 7,168).
    assert slim_batch(units, 8, 0.5, 256, 100) == 44
    steps = 20_000 + 44 * 7_168
    phase = lambda budget, device_type="cpu", pass_peak=50_000, **cache: plan_slim_phase(
        units, section.model_copy(update={"cache": section.cache.model_copy(update=cache)}), block_batch=8,
        evaluation_batch=10, train_samples=100, val_samples=28, pass_peak=lambda batch, written: pass_peak + written,
        resident=20_000, planned_peak=300_000, budget=budget, device_type=device_type, host_limit=10**9)
    on_device = phase(max(300_000, steps) + features)
    assert (on_device.placement, on_device.feature_bytes) == ("device", features)
    assert on_device.peak_bytes == steps + features
    on_disk = phase(max(300_000, steps) + features - 1)
    assert (on_disk.placement, on_disk.peak_bytes) == ("disk", steps)
    assert phase(max(300_000, steps) + features - 1, "cuda").placement == "host"
    # The pass that computes the features (an evaluation's forward, and the batch of 10 it writes) can hold
    # more than the steps: the features fit beside it or go.
    pass_peak = 600_000 + 10 * 16 * 4 * 4 * 4
    assert phase(pass_peak + features - 1, pass_peak=600_000).placement == "disk"
    assert phase(pass_peak + features, pass_peak=600_000).peak_bytes == pass_peak + features
    # A placement the recipe forces is followed, whatever it costs (the plan refuses one over the budget).
    assert phase(1, placement="device").peak_bytes == steps + features
    assert plan_slim_phase([_unit(1)], section, block_batch=8, evaluation_batch=8, train_samples=100, val_samples=28,
                           pass_peak=lambda batch, written: 1, resident=1, planned_peak=1, budget=10**9,
                           device_type="cpu", host_limit=10**9).placement == "none"


def test_a_pass_that_fills_a_cache_runs_at_the_largest_batch_whose_written_outputs_fit():
    # A pass holding 50,000 bytes and 3,000 a sample (its forward, and the features it writes).
    tried = []
    peak = lambda batch: tried.append(batch) or 50_000 + 3_000 * batch
    assert writing_pass_batch(peak, 40, 170_000, (2, 8)) == 40 and tried == [40]  # the evaluation batch fits
    assert writing_pass_batch(peak, 40, 140_000, (2, 8)) == 30
    assert writing_pass_batch(peak, 40, 140_000 - 1, (2, 8)) == 29
    assert writing_pass_batch(peak, 40, 52_000, (2, 8)) == 1  # not even batch 1: the plan refuses the block
    # In the phase: 16 x 4 x 4 float32 features (1,024 bytes) a sample, beside a forward of 2,000 a sample;
    # the slim steps at batch 8 hold 20,000 + 8 x 7,168 bytes.
    section = NeuroFluxSection.model_validate({"slim_heads": {"share": 0.5, "batch_size": 8},
                                               "cache": {"dtype": "float32"}, "profile_batch_sizes": (2, 8)})
    phase = plan_slim_phase([_unit(16)], section, block_batch=8, evaluation_batch=64, train_samples=100,
                            val_samples=28, pass_peak=lambda batch, written: 100_000 + 2_000 * batch + written,
                            resident=20_000, planned_peak=150_000, budget=200_000, device_type="cpu", host_limit=0)
    assert phase.features_batch == (200_000 - 100_000) // 3_024 == 33
    assert (phase.placement, phase.peak_bytes) == ("disk", 100_000 + 33 * 3_024)


def _plan(memory: str, train_samples: int = 512, **train):
    return plan_training(make_tiny_unit_net(), TINY_CLASSES, image_size=TINY_SIZE, train_samples=train_samples,
                         val_samples=64, budget=BudgetSection(memory=memory), train=TrainSection(**train),
                         augment=AugmentSection(), device=CPU)


def test_plan_fits_the_budget_and_sizes_backprop_with_the_same_profiler():
    plan = _plan("2MiB")
    assert plan.budget_bytes == 2 * 2**20
    assert all(b.predicted_peak_bytes <= plan.budget_bytes for b in plan.blocks)
    assert [u for b in plan.blocks for u in b.units] == [0, 1, 2]
    assert all(unit.seconds_per_sample > 0 for unit in plan.units)  # every unit's step is timed too
    backprop = fit_memory(list(plan.backprop_measurements))
    planned = int(plan.budget_bytes * PLANNING_SHARE)  # batches are sized with a small margin
    assert plan.backprop_batch_size == backprop.max_batch(planned, 512)
    assert backprop.predicted(plan.backprop_batch_size) <= planned
    # Local learning keeps one unit's activations alive; backprop keeps all of them.
    assert max(b.batch_size for b in plan.blocks) > plan.backprop_batch_size


def test_the_plan_places_the_slim_heads_features_and_shows_where():
    # 2,048 training images: the last block's features fit beside its step, and hold more than the step freed.
    plain, slim = _plan("16MiB", 2048), _plan("16MiB", 2048, neuroflux={"slim_heads": {"share": 0.5}})
    assert all(b.slim_features_placement == "none" and b.slim_peak_bytes == 0 for b in plain.blocks)
    assert [b.batch_size for b in slim.blocks] == [b.batch_size for b in plain.blocks]  # the steps are the same
    assert all(b.slim_features_placement in ("device", "disk") and b.slim_features_bytes > 0 for b in slim.blocks)
    for block, before in zip(slim.blocks, plain.blocks):
        assert block.predicted_peak_bytes == max(before.predicted_peak_bytes, block.slim_peak_bytes)
        assert block.predicted_peak_bytes <= slim.budget_bytes
    # Where they fit on the device the features can set the block's peak.
    assert any(b.predicted_peak_bytes > before.predicted_peak_bytes and b.slim_features_placement == "device"
               for b, before in zip(slim.blocks, plain.blocks))
    assert "slim heads' features" in _text(slim) and "slim heads' features" not in _text(plain)
    # Recomputing the earlier blocks leaves no cache to follow: the features are placed as with auto.
    recomputing = _plan("16MiB", neuroflux={"slim_heads": {"share": 0.5}, "cache": {"placement": "recompute"}})
    assert {b.slim_features_placement for b in recomputing.blocks} == {"device", "disk"}
    assert all(b.slim_peak_bytes <= b.predicted_peak_bytes <= recomputing.budget_bytes for b in recomputing.blocks)
    # Its features pass runs at the training batch, whose step already fills the budget: where the batch of
    # features it writes would not fit beside it, the pass runs at a smaller batch.
    first = recomputing.blocks[0]
    assert 0 < first.slim_features_batch < first.evaluation_batch == first.batch_size
    assert f"written at batch {first.slim_features_batch}" in _text(recomputing)
    with pytest.raises(BudgetError, match="slim heads' features .* on the device"):
        _plan("6MiB", neuroflux={"slim_heads": {"share": 0.5}, "cache": {"placement": "device"}})


def test_a_cache_forced_onto_the_device_is_filled_at_the_batch_that_fits_or_refused():
    auto = _plan("2560KiB")
    assert all(b.predicted_peak_bytes <= auto.budget_bytes and b.cache_placement != "device" for b in auto.blocks)
    # Forced onto the device, the output cache is there through the pass that fills it: the pass runs at a
    # smaller batch than the block's evaluation, and the block stays within the budget.
    forced = _plan("2560KiB", neuroflux={"cache": {"placement": "device"}})
    first = forced.blocks[0]
    assert first.cache_placement == "device" and 0 < first.caching_batch_size < first.evaluation_batch
    assert first.caching_peak_bytes <= first.predicted_peak_bytes <= forced.budget_bytes
    assert f"written at batch {first.caching_batch_size}" in _text(forced)
    # 2,048 images' outputs do not fit the device beside even a batch of 1: refused at plan time, with the cause.
    with pytest.raises(BudgetError, match=r"block 0: its output cache \(.*\) on the device .* leaves no room"):
        _plan("2560KiB", 2048, neuroflux={"cache": {"placement": "device"}})


def _text(plan) -> str:
    console = Console(width=250, record=True, file=io.StringIO())
    console.print(plan_table(plan))
    return console.export_text()


def test_evaluation_batch_is_the_largest_measured_to_fit_and_never_below_the_training_batch():
    steep = lambda b: 1000 + 100 * b if b <= 40 else 1000 + 100 * b + 50 * (b - 40)  # the line under-predicts
    measured = []
    measure = lambda b: measured.append(b) or steep(b)
    batch = largest_evaluation_batch(measure, allowed=8000, floor=3, cap=256, batch_sizes=(4, 16))
    largest = 60  # steep(60) == 8000
    assert measured[:3] == [3, 4, 16] and 70 in measured  # the line through 4 and 16 said 70: over, measured
    assert batch in measured and steep(batch) <= 8000  # only a batch measured to fit
    assert 0.9 * largest <= batch <= largest  # the line refitted through 70 lands close below
    assert largest_evaluation_batch(steep, allowed=8000, floor=3, cap=20, batch_sizes=(4, 16)) == 20
    assert largest_evaluation_batch(steep, allowed=1000, floor=3, cap=256, batch_sizes=(4, 16)) == 3


def _measured(modules: list, run) -> int:
    """Peak of ``run(copies, optimizer)`` on copies of ``modules``, their optimizer state resident as in
    training."""
    copies = [copy.deepcopy(m) for m in modules]
    optimizer = make_optimizer([p for m in copies for p in m.parameters()], TrainSection(), 8)
    _create_optimizer_state(optimizer)
    meter = PeakMeter(CPU, copies, [optimizer])
    with meter.step():
        run(copies, optimizer)
    return meter.reading.total


def _evaluated(modules: list, forward, source, batch: int) -> int:
    def run(copies, _):
        with eval_mode(*copies):
            top1_accuracies(lambda x: forward(copies, x), source, batch)
    return _measured(modules, run)


def test_evaluation_at_the_planned_batch_holds_no_more_than_the_training_step():
    """Under a budget that limits training, evaluation runs at a larger batch (its forward pass keeps no
    activations for a backward one). Measured here over a whole validation split of 512 images, through
    the trainers' evaluation loop, against a training step at the training batch: no larger."""
    net = make_tiny_unit_net()
    plan = plan_training(net, TINY_CLASSES, image_size=TINY_SIZE, train_samples=512, val_samples=512,
                         budget=BudgetSection(memory="1MiB"), train=TrainSection(), augment=AugmentSection(),
                         device=CPU)
    data = make_tiny_data(train=8, val=512, test=8)
    val = ImageInput(data.val, data.preprocessing, Augment(), CPU)

    block = plan.blocks[0]
    units = [net.units[i] for i in block.units]
    heads = [AuxHead(plan.units[i].out_shape[0], plan.units[i].head_filters, TINY_CLASSES,
                     pool=plan.units[i].head_pool, depth=plan.units[i].head_depth) for i in block.units]
    n = len(units)
    assert block.batch_size < block.evaluation_batch < 256  # larger, and not merely the cap
    evaluation = _evaluated([*units, *heads], lambda m, x: block_exits(m[:n], m[n:], x), val,
                            block.evaluation_batch)
    step = measure_block_step(units, heads, plan.units[0].in_shape, TINY_CLASSES, block.batch_size,
                              section=TrainSection(), device=CPU)
    assert evaluation <= step

    batch, evaluation_batch = plan.backprop_batch_size, plan.backprop_evaluation_batch_size
    assert batch < evaluation_batch < 256
    evaluation = _evaluated([net], lambda m, x: (m[0](x),), val, evaluation_batch)
    step = _measured([net], lambda m, optimizer: backprop_step(
        m[0], torch.randn(batch, 3, TINY_SIZE, TINY_SIZE), torch.randint(0, TINY_CLASSES, (batch,)), optimizer))
    assert evaluation <= step


def test_budget_below_batch_one_is_refused_with_the_minimum():
    with pytest.raises(BudgetError) as info:
        _plan("20KiB")
    message = str(info.value)
    assert "batch size 1 needs" in message and "budget.memory" in message
    assert "MiB" in info.value.hint
