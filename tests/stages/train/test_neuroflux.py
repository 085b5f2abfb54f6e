"""NeuroFlux training on the tiny fixtures: budget held and measured, caches, checkpoints, resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from nfcompile.core.results import HEAD_EPOCHS, NOISE_SCALE, SLIM_HEADS, Plan, TrainResult
from nfcompile.data.batches import Augment
from nfcompile.data.sources import ImageInput
from nfcompile.errors import BudgetError, BudgetExceeded
from nfcompile.learning import top1_accuracy
from nfcompile.models import AuxHead
from nfcompile.recipe.schema import AugmentSection, BudgetSection, ModelSection, TrainSection
from nfcompile.stages.plan import plan_training
from nfcompile.stages.train import train_model
from nfcompile.stages.train import neuroflux, slim_heads
from nfcompile.stages.train.checkpoint import TrainCheckpoint

from conftest import TINY_CLASSES, TINY_SIZE, make_tiny_data, make_tiny_unit_net
from isolated import run_isolated

CPU = torch.device("cpu")
BUDGET = BudgetSection(memory="1MiB")


def _train_section(**neuroflux_fields) -> TrainSection:
    # Every block trains unless a test asks for the stop (the tiny net's deeper exits often stall): these tests
    # are about the blocks.
    nf = {"profile_batch_sizes": (2, 8), "max_batch_size": 64, "block_split_ratio": 1.2,
          "stop_stalled_blocks": False, **neuroflux_fields}
    return TrainSection.model_validate({"epochs": 8, "patience": 0, "lr": 0.4, "neuroflux": nf})


def _plan(train: TrainSection, data, budget=BUDGET):
    return plan_training(make_tiny_unit_net(), TINY_CLASSES, image_size=TINY_SIZE, train_samples=len(data.train),
                         val_samples=len(data.val), budget=budget, train=train,
                         augment=AugmentSection(crop_padding=1), device=CPU)


def _train(plan, train, data, out_dir, *, resume=False, budget=BUDGET, fingerprint="f"):
    torch.manual_seed(0)
    return train_model(make_tiny_unit_net(), plan, data, model=ModelSection(), train=train,
                       augment=AugmentSection(crop_padding=1), budget=budget, device=CPU, seed=0,
                       out_dir=out_dir, resume=resume, fingerprint=fingerprint)


@pytest.fixture(scope="module")
def data():
    return make_tiny_data(train=96, val=32, test=32)


def trained_in_this_process(out_dir: str, method: str = "neuroflux", budget: str = "1MiB",
                            cache: str = "auto", max_units: int | None = 2, train_samples: int = 96,
                            slim: float | None = None) -> dict:
    """Plan and train the tiny net (run by `isolated.run_isolated` in a fresh process: the measured
    peak counts every tensor alive in the process, as in a build)."""
    data = make_tiny_data(train=train_samples, val=32, test=32)
    train = _train_section(cache={"placement": cache}, max_units_per_block=max_units,
                           slim_heads={"share": slim}).model_copy(update={"method": method})
    plan = _plan(train, data, BudgetSection(memory=budget))
    outcome = _train(plan, train, data, Path(out_dir), budget=BudgetSection(memory=budget))
    return {"plan": plan, "result": outcome.result, "train_samples": len(data.train)}


def _fresh(tmp_path, **kwargs):
    measured = run_isolated(__file__, "trained_in_this_process", out_dir=str(tmp_path), **kwargs)
    return Plan.from_dict(measured["plan"]), TrainResult.from_dict(measured["result"]), measured["train_samples"]


@pytest.mark.parametrize("slim", [None, 0.5])
def test_blocks_stay_under_the_budget_as_measured(tmp_path, slim):
    # Slim heads train inside the block's meter, after its steps: on the tiny net (no pooling) their features
    # and steps must fit what the block's step left.
    plan, result, _ = _fresh(tmp_path, slim=slim)
    if slim:
        assert all(b.time_spent["slim heads"] > 0 for b in result.blocks)
    assert len(plan.blocks) >= 2, "the tiny budget should split the units"
    for block in result.blocks:
        assert block.trained
        assert block.measured_peak_bytes <= plan.budget_bytes
        assert abs(block.predicted_peak_bytes - block.measured_peak_bytes) <= 0.15 * block.measured_peak_bytes
    assert result.exit_units == (0, 1, 2)
    assert (tmp_path / "checkpoint.pt").is_file()
    # Learning happened: the deepest exit beats chance (0.25) on validation.
    assert result.exit_val_accuracy[-1] > 0.5


def test_slim_heads_features_on_the_device_are_planned_into_the_block_peak(tmp_path):
    # With 1,024 training images the last block's slim heads' features (cached where its step's headroom
    # lets them, here on the device) hold more than its training step: the plan counts them in its peak.
    plan, result, _ = _fresh(tmp_path, budget="4MiB", train_samples=1024, slim=0.5)
    block, measured = plan.blocks[-1], result.blocks[-1]
    assert block.slim_features_placement == "device" and block.slim_features_bytes > 0
    assert max(measured.peak_breakdown, key=measured.peak_breakdown.get) == "slim heads' features"
    assert block.predicted_peak_bytes == block.slim_peak_bytes
    assert measured.measured_peak_bytes <= plan.budget_bytes
    assert abs(block.predicted_peak_bytes - measured.measured_peak_bytes) <= 0.15 * measured.measured_peak_bytes


def test_the_slim_heads_features_pass_runs_at_the_batch_the_plan_gave_it(data, tmp_path, monkeypatch):
    written = []

    class Recorded(slim_heads.ActivationCache):
        def write(self, start, values):
            written.append(len(values))
            super().write(start, values)

    monkeypatch.setattr(slim_heads, "ActivationCache", Recorded)
    train = _train_section(slim_heads={"share": 0.5, "epochs": 1}).model_copy(update={"epochs": 1})
    plan = _plan(train, data)
    assert all(b.slim_features_batch > 5 for b in plan.blocks)
    lowered = dataclasses.replace(plan, blocks=tuple(dataclasses.replace(b, slim_features_batch=5)
                                                     for b in plan.blocks))
    _train(lowered, train, data, tmp_path)
    # 96 training and 32 monitor samples, in batches of 5 (each slimmed exit's cache written per batch).
    assert written and set(written) == {5, 96 % 5, 32 % 5}


def test_slim_heads_refuse_a_plan_made_without_them(data, tmp_path):
    # The plan places their features (an API caller can pass a plan made for another training section).
    plan = _plan(_train_section(), data)
    with pytest.raises(ValueError, match="plan was made without neuroflux.slim_heads"):
        _train(plan, _train_section(slim_heads={"share": 0.5}), data, tmp_path)


def test_disk_cache_is_used_and_cleaned_up(data, tmp_path):
    train = _train_section(cache={"placement": "disk"})
    plan = _plan(train, data)
    placements = [b.cache_placement for b in plan.blocks]
    assert placements[:-1] == ["disk"] * (len(placements) - 1) and placements[-1] == "none"
    outcome = _train(plan, train, data, tmp_path)
    assert all(b.cache_seconds > 0 for b in outcome.result.blocks[:-1])
    assert not list((tmp_path / "cache").glob("*.bin")), "cache files must be deleted after training"


def test_the_training_time_is_accounted_for_by_phase(data, tmp_path):
    train = _train_section(cache={"placement": "disk"}).model_copy(update={"epochs": 2})
    result = _train(_plan(train, data), train, data, tmp_path).result
    for block in result.blocks:
        phases = {"steps", "batches", "evaluation", "snapshots", "memory meter's scan"}
        assert set(block.time_spent) == (phases | {"caching pass"} if block.cache_placement != "none" else phases)
        assert all(seconds > 0 for seconds in block.time_spent.values()), block.time_spent
        # The phases inside the block never add up to more than the block's own time and its caching pass.
        inside = sum(block.time_spent.values()) - block.time_spent["memory meter's scan"]
        assert inside <= block.seconds + block.cache_seconds
    spent = result.time_spent()
    assert spent["rest"] >= 0 and sum(spent.values()) == pytest.approx(result.seconds)


def test_device_cache_counts_against_the_measured_peak(tmp_path):
    plan, result, _ = _fresh(tmp_path, budget="2MiB", cache="device")
    first, second = result.blocks[:2]
    assert first.cache_placement == "device"
    # The second block reads the first one's cache from the device: its peak includes it, and its
    # batch size was planned with the cache taking its share of the budget.
    assert second.measured_peak_bytes >= first.cache_bytes
    assert second.measured_peak_bytes <= plan.budget_bytes
    # The first block's meter saw the pass that filled that cache, beside it on the device.
    assert first.measured_peak_bytes <= plan.budget_bytes


@pytest.mark.parametrize("slim", [None, 0.5])
def test_resume_skips_finished_blocks_and_matches_a_full_run(data, tmp_path, monkeypatch, slim):
    # With slim heads the checkpoint holds block 0's slim heads, whose shapes the restored net must take.
    train = _train_section(slim_heads={"share": slim})
    plan = _plan(train, data)
    # What is resumed is judged here, not the budget: inside pytest other tests' tensors share the
    # process (the budget is held in a fresh process: test_blocks_stay_under_the_budget_as_measured).
    budget = BudgetSection(memory="1MiB", enforce=False)
    full = _train(plan, train, data, tmp_path / "full", budget=budget)

    calls = []
    real = neuroflux._train_block

    def crash_on_second(block, *args, **kwargs):
        calls.append(block.index)
        if block.index == 1:
            raise KeyboardInterrupt("simulated crash")
        return real(block, *args, **kwargs)

    monkeypatch.setattr(neuroflux, "_train_block", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        _train(plan, train, data, tmp_path / "run", budget=budget)
    monkeypatch.setattr(neuroflux, "_train_block", lambda block, *a, **k: calls.append(block.index) or real(block, *a, **k))
    resumed = _train(plan, train, data, tmp_path / "run", resume=True, budget=budget)
    assert calls == [0, 1, *range(1, len(plan.blocks))], "block 0 must not be trained again"
    assert resumed.result.details["resumed_blocks"] == 1
    # Its time is split over the blocks this process trained, not the one restored from the checkpoint.
    spent = resumed.result.time_spent()
    assert spent["rest"] > 0 and sum(spent.values()) == pytest.approx(resumed.result.seconds)
    for a, b in zip(full.net.state_dict().values(), resumed.net.state_dict().values()):
        assert torch.equal(a, b)
    if slim:  # the checkpoint the resumed run started from held a slim head
        assert any(full.result.blocks[0].slim_head_filters)


def test_a_checkpoint_for_other_settings_is_ignored(data, tmp_path):
    train = _train_section()
    plan = _plan(train, data)
    _train(plan, train, data, tmp_path, fingerprint="one")
    again = _train(plan, train, data, tmp_path, resume=True, fingerprint="two")
    assert again.result.details["resumed_blocks"] == 0


def test_a_block_over_the_budget_fails_the_run(data, tmp_path):
    train = _train_section()
    plan = _plan(train, data)
    # Shrink the budget after planning: the plan's batch sizes now overshoot what it allows.
    shrunk = dataclasses.replace(plan, budget_bytes=plan.budget_bytes // 2)
    with pytest.raises(BudgetExceeded, match="exceeds budget.memory"):
        _train(shrunk, train, data, tmp_path)


def test_stalled_blocks_are_skipped(data, tmp_path, monkeypatch):
    train = _train_section(stop_stalled_blocks=True, stall_delta=1.0)  # nothing can beat +100 points
    plan = _plan(train, data)
    outcome = _train(plan, train, data, tmp_path)
    trained = [b.trained for b in outcome.result.blocks]
    assert trained[:2] == [True, True] and not any(trained[2:])
    assert outcome.result.exit_units == tuple(u for b in outcome.result.blocks if b.trained for u in b.units)
    # The block that stalled fills no cache: no block after it reads one.
    first, stalled = outcome.result.blocks[:2]
    assert first.cache_placement != "none" and first.time_spent["caching pass"] > 0
    assert stalled.cache_placement == "none" and "caching pass" not in stalled.time_spent
    # Resumed, the run has nothing left to train, and rebuilds no cache for it.
    cached, real = [], neuroflux._next_inputs
    monkeypatch.setattr(neuroflux, "_next_inputs", lambda *args, **kwargs: cached.append(1) or real(*args, **kwargs))
    resumed = _train(plan, train, data, tmp_path, resume=True)
    assert cached == [] and [b.trained for b in resumed.result.blocks] == trained


def test_the_first_blocks_train_the_epochs_block_epochs_names_and_the_rest_train_epochs(data, tmp_path):
    train = _train_section(block_epochs=(2, 3)).model_copy(update={"epochs": 4})
    plan = _plan(train, data)
    assert len(plan.blocks) >= 3, "the tiny budget should give a block past the named ones"
    outcome = _train(plan, train, data, tmp_path)
    blocks = outcome.result.blocks
    assert [b.epochs_run for b in blocks] == [2, 3] + [4] * (len(blocks) - 2)
    assert [len(b.history) for b in blocks] == [b.epochs_run for b in blocks]
    # Each block's schedule spans its own epochs: block 0's rate has annealed to nearly 0 by its second
    # (last) epoch, where a schedule over train.epochs would still be near half its peak.
    peak = train.lr * train.neuroflux.lr_scale * blocks[0].batch_size / train.reference_batch_size
    assert blocks[0].history[-1].lr < 0.2 * peak


def test_train_epochs_caps_the_epochs_block_epochs_names():
    train = _train_section(block_epochs=(2, 6)).model_copy(update={"epochs": 4})
    assert [neuroflux.block_epochs(train, i) for i in range(4)] == [2, 4, 4, 4]


def test_head_epochs_train_only_the_heads_and_each_keeps_its_new_weights_only_where_its_exit_did_not_fall(
        data, tmp_path):
    # Heads not warm-started, so a block's units are trained alike with or without the earlier head epochs.
    runs = {}
    for head_epochs in (0, 2):
        train = _train_section(head_epochs=head_epochs, head={"warm_start": False}).model_copy(update={"epochs": 2})
        runs[head_epochs] = _train(_plan(train, data), train, data, tmp_path / str(head_epochs))
    plain, refined = runs[0], runs[2]
    assert all(torch.equal(a, b) for a, b in zip(plain.net.units.state_dict().values(),
                                                 refined.net.units.state_dict().values()))
    assert all(p.requires_grad for p in refined.net.parameters()), "frozen units must get their gradients back"
    assert not list(tmp_path.rglob(".snapshot-*")), "a head's snapshot was left behind"
    outcomes = []
    for before, after in zip(plain.result.blocks, refined.result.blocks):
        assert after.epochs_run == before.epochs_run == 2
        assert (after.epochs_label, before.epochs_label) == ("2 + 2 heads", "2")
        assert [r.epoch for r in after.history] == [1, 2, 3, 4]  # the heads' epochs numbered on
        assert [r.val_accuracy for r in after.history[:2]] == [r.val_accuracy for r in before.history[:2]]
        assert after.time_spent[HEAD_EPOCHS] > 0 and all(r.lr > 0 for r in after.history[2:])
        last = after.history[-1].val_accuracy
        for position, unit in enumerate(after.units):
            kept_new = last[position] >= before.best_val_accuracy[position]
            same = all(torch.equal(a, b) for a, b in zip(plain.net.heads[str(unit)].state_dict().values(),
                                                         refined.net.heads[str(unit)].state_dict().values()))
            assert same != kept_new, (unit, last[position], before.best_val_accuracy[position])
            assert after.best_val_accuracy[position] == max(last[position], before.best_val_accuracy[position])
            outcomes.append(kept_new)
    assert True in outcomes and False in outcomes, "both a kept and a restored head are what the test is about"


def test_an_exit_ships_a_slim_head_trained_on_its_frozen_unit_only_where_it_does_at_least_as_well(data, tmp_path,
                                                                                                   monkeypatch):
    runs, placements = {}, []

    class Recorded(slim_heads.ActivationCache):
        def __init__(self, placement, *args, **kwargs):
            placements.append(placement)
            super().__init__(placement, *args, **kwargs)

    monkeypatch.setattr(slim_heads, "ActivationCache", Recorded)
    for share in (None, 0.5):
        # float32 features: the slim heads are judged on exactly what the block's own evaluation saw. On disk,
        # as cache.placement asks, so that the files are seen to go.
        train = _train_section(slim_heads={"share": share, "epochs": 3},
                               cache={"dtype": "float32", "placement": "disk"}).model_copy(update={"epochs": 2})
        runs[share] = _train(_plan(train, data), train, data, tmp_path / str(share))
    assert placements and set(placements) == {"disk"}
    plain, slimmed = runs[None], runs[0.5]
    # Slimming follows a block's training, and the next block's heads start from the wide heads: the units
    # learn exactly what they learn without it.
    assert all(torch.equal(a, b) for a, b in zip(plain.net.units.state_dict().values(),
                                                 slimmed.net.units.state_dict().values()))
    assert not list((tmp_path / "0.5").rglob("*.bin")), "a slim head's feature cache was left behind"
    monitor = ImageInput(data.monitor, data.preprocessing, Augment(), CPU)
    shipped = []
    for before, after in zip(plain.result.blocks, slimmed.result.blocks):
        assert [r.val_accuracy for r in after.history] == [r.val_accuracy for r in before.history]
        assert after.time_spent[SLIM_HEADS] > 0 and before.slim_head_filters == ()
        for position, unit in enumerate(after.units):
            head, wide = slimmed.net.heads[str(unit)], plain.net.heads[str(unit)]
            if after.slim_head_filters[position]:
                assert head.filters == after.slim_head_filters[position] == wide.filters // 2
                assert after.best_val_accuracy[position] >= before.best_val_accuracy[position]
                # The accuracy recorded is the shipped exit's, end to end (one sample's worth of rounding).
                assert after.best_val_accuracy[position] == pytest.approx(
                    top1_accuracy(slimmed.net.exit_net(unit), monitor), abs=1 / len(monitor) + 1e-9)
            else:
                assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), wide.state_dict().values()))
                assert after.best_val_accuracy[position] == before.best_val_accuracy[position]
            shipped.append(bool(after.slim_head_filters[position]))
    assert True in shipped and False in shipped, "both a slim and a kept wide head are what the test is about"


def test_a_blocks_heads_start_from_the_previous_blocks_trained_head_where_unit_and_head_match():
    def unit(channels, filters):
        return SimpleNamespace(out_shape=(channels, 4, 4), head_filters=filters, head_pool=None, head_depth=1)

    plan = SimpleNamespace(units=[unit(8, 8), unit(8, 8), unit(8, 8), unit(8, 16), unit(16, 8)])
    torch.manual_seed(0)
    heads = torch.nn.ModuleDict({str(i): AuxHead(u.out_shape[0], u.head_filters, TINY_CLASSES)
                                 for i, u in enumerate(plan.units)})
    untouched = {k: {n: t.clone() for n, t in h.state_dict().items()} for k, h in heads.items()}
    net = SimpleNamespace(heads=heads)

    assert neuroflux._warm_start_heads(SimpleNamespace(index=1, units=(2, 3, 4)), net, plan) == [2]
    trained, started = heads["1"].state_dict(), heads["2"].state_dict()
    assert all(torch.equal(started[n], trained[n]) for n in trained)
    assert not torch.equal(untouched["2"]["body.0.weight"], trained["body.0.weight"])
    for other in ("3", "4"):  # a wider head, another shape: their own initial weights
        assert all(torch.equal(t, untouched[other][n]) for n, t in heads[other].state_dict().items())
    assert neuroflux._warm_start_heads(SimpleNamespace(index=0, units=(0, 1)), net, plan) == []


def test_a_blocks_heads_are_warm_started_from_the_heads_before_slimming_and_before_the_checkpoint(
        data, tmp_path, monkeypatch):
    events = []
    real_warm, real_slim, real_save = neuroflux._warm_start_heads, neuroflux._slim_heads, TrainCheckpoint.save
    monkeypatch.setattr(neuroflux, "_warm_start_heads",
                        lambda block, *a: events.append(("warm start", block.index)) or real_warm(block, *a))
    monkeypatch.setattr(neuroflux, "_slim_heads",
                        lambda block, *a, **k: events.append(("slim", block.index)) or real_slim(block, *a, **k))
    monkeypatch.setattr(TrainCheckpoint, "save", lambda self, net, model, classes, blocks: events.append(
        ("checkpoint", blocks[-1].index)) or real_save(self, net, model, classes, blocks))
    train = _train_section(slim_heads={"share": 0.5, "epochs": 1}).model_copy(update={"epochs": 1})
    plan = _plan(train, data)
    _train(plan, train, data, tmp_path)
    last = len(plan.blocks) - 1
    assert last >= 1 and events == [event for k in range(last + 1) for event in (
        *([("warm start", k + 1)] if k < last else []), ("slim", k), ("checkpoint", k))]


@pytest.mark.parametrize("warm_start", [True, False])
def test_heads_are_warm_started_before_every_block_only_when_the_recipe_says(data, tmp_path, monkeypatch, warm_start):
    asked = []
    monkeypatch.setattr(neuroflux, "_warm_start_heads", lambda block, net, plan: asked.append(block.index) or [])
    train = _train_section(head={"warm_start": warm_start}).model_copy(update={"epochs": 1})
    plan = _plan(train, data)
    _train(plan, train, data, tmp_path)
    # Each block's heads after the block before it: the first block's have no head to start from.
    assert asked == ([b.index for b in plan.blocks[1:]] if warm_start else [])


def test_blocks_train_at_the_recipes_rate_times_lr_scale(data, tmp_path):
    rates = {}
    for scale in (1.0, 2.0):
        train = _train_section(lr_scale=scale).model_copy(update={"epochs": 2})
        outcome = _train(_plan(train, data), train, data, tmp_path / str(scale))
        rates[scale] = [[epoch.lr for epoch in block.history] for block in outcome.result.blocks]
    assert all(lr > 0 for block in rates[1.0] for lr in block) and len(rates[1.0]) >= 2
    assert rates[2.0] == [pytest.approx([2 * lr for lr in block]) for block in rates[1.0]]


def test_backprop_baseline_uses_the_profiled_batch(tmp_path):
    plan, result, train_samples = _fresh(tmp_path, method="backprop", budget="4MiB")
    (block,) = result.blocks
    assert block.batch_size == min(plan.backprop_batch_size, train_samples)
    assert block.measured_peak_bytes <= plan.budget_bytes
    assert result.exit_units == (2,)


def test_backprop_that_cannot_fit_is_a_budget_error(data, tmp_path):
    train = _train_section().model_copy(update={"method": "backprop"})
    plan = dataclasses.replace(_plan(train, data), backprop_batch_size=0)
    with pytest.raises(BudgetError, match="does not fit"):
        _train(plan, train, data, tmp_path)


def test_a_finished_blocks_input_cache_is_gone_before_the_next_block_is_measured(tmp_path):
    # One unit per block, every cache on the device: block 2 starts once block 1 has cached its output,
    # and block 1's own input cache must be freed by then, not counted as block 2's resident memory.
    plan, result, _ = _fresh(tmp_path, budget="16MiB", cache="device", max_units=1, train_samples=1600)
    # 1600 images: the caches outweigh a training step, so the caching passes are blocks 0 and 1's peaks.
    assert [b.cache_placement for b in plan.blocks] == ["device", "device", "none"]
    for block, planned in zip(result.blocks, plan.blocks):
        # The plan's peak covers the caching pass (its bound on the forward batch is loose: no overshoot).
        assert block.measured_peak_bytes <= planned.predicted_peak_bytes * 1.02
        others = block.peak_breakdown.get("other resident tensors", 0)
        assert others < planned.other_resident_bytes + plan.blocks[0].cache_bytes / 2, block.peak_breakdown


def test_recompute_placement_trains_without_any_cache(data, tmp_path):
    train = _train_section(cache={"placement": "recompute"})
    plan = _plan(train, data)
    assert [b.cache_placement for b in plan.blocks][:-1] == ["recompute"] * (len(plan.blocks) - 1)
    outcome = _train(plan, train, data, tmp_path)
    for block in outcome.result.blocks:
        assert block.measured_peak_bytes <= plan.budget_bytes
        assert abs(block.predicted_peak_bytes - block.measured_peak_bytes) <= 0.15 * block.measured_peak_bytes
    assert not (tmp_path / "cache").exists()


def test_the_noise_scale_policy_trains_each_block_at_its_measured_noise_scale_at_most(data, tmp_path, monkeypatch):
    batches = []
    real_fit = neuroflux.fit
    monkeypatch.setattr(neuroflux, "fit", lambda *a, **k: batches.append(k["batch_size"]) or real_fit(*a, **k))
    train = _train_section(batch_policy="noise_scale").model_copy(update={"epochs": 1})
    plan = _plan(train, data)
    result = _train(plan, train, data, tmp_path).result
    assert batches == [b.batch_size for b in result.blocks]  # what the result reports is what trained
    measured = 0
    for block, planned in zip(result.blocks, plan.blocks):
        assert 2 <= block.batch_size <= planned.batch_size
        assert block.measured_peak_bytes <= plan.budget_bytes  # the measurement is inside the block's budget
        if block.noise_scale is not None:
            measured += 1
            assert block.batch_size == max(2, min(planned.batch_size, int(block.noise_scale)))
            assert block.time_spent[NOISE_SCALE] > 0
        if planned.batch_size < 8:  # too small to split into four micro-batches of two: kept as planned
            assert block.noise_scale is None and block.batch_size == planned.batch_size
    assert measured, f"no block measured its noise scale (planned batches {[b.batch_size for b in plan.blocks]})"
