"""The budget counts everything resident: a block whose budget the rest of the network's weights would
break. Each scenario trains in a fresh process (tests/isolated.py), where the measured peak counts
every tensor alive, as in a build."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from nfcompile.core.memory import BlockMeter, PeakMeter
from nfcompile.models.adapters import UnitNet
from nfcompile.recipe.schema import AugmentSection, BudgetSection, ModelSection, TrainSection
from nfcompile.stages import plan as planning
from nfcompile.stages.plan import plan_training
from nfcompile.stages.train import train_model

from conftest import TINY_CLASSES, TINY_SIZE, make_tiny_data
from isolated import run_isolated

BUDGET = "3MiB"


def _fat_tailed_net() -> UnitNet:
    """Three small units, then one whose weights (300 KiB) are a tenth of a 3 MiB budget."""
    torch.manual_seed(0)

    def conv(c_in, c_out, stride):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                             nn.BatchNorm2d(c_out), nn.ReLU())

    units = [("stem", conv(3, 8, 1)), ("conv2", conv(8, 16, 2)), ("conv3", conv(16, 32, 2)),
             ("wide", conv(32, 256, 1))]
    return UnitNet(units, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(256, TINY_CLASSES)),
                   arch="tiny-wide")


def _section() -> TrainSection:
    return TrainSection.model_validate({"epochs": 2, "patience": 0, "lr": 0.2, "neuroflux": {
        "profile_batch_sizes": (2, 8), "max_batch_size": 64, "block_split_ratio": 1.2,
        "head": {"policy": "fixed", "filters": 8}}})


def block_zero_trained(out_dir: str, count_the_rest: bool) -> dict:
    """Plan (with or without counting the rest of the network, as the planner did before) and train
    block 0 under enforcement; report the plan, what a hand-picked tracker saw on its first step, and
    what happened."""
    data = make_tiny_data(train=96, val=32, test=32)
    train, budget = _section(), BudgetSection(memory=BUDGET)
    if not count_the_rest:  # the old accounting: only the block's own units and heads
        planning.Resident.besides = lambda self, units: 0
    plan = plan_training(_fat_tailed_net(), TINY_CLASSES, image_size=TINY_SIZE, train_samples=len(data.train),
                         val_samples=len(data.val), budget=budget, train=train, augment=AugmentSection(),
                         device=torch.device("cpu"))
    first = plan.blocks[0]
    report = {"batch": first.batch_size, "predicted": first.predicted_peak_bytes, "budget": plan.budget_bytes,
              "hand_picked_first_step": _hand_picked_step_peak(plan, first.batch_size)}
    try:
        result = train_model(_fat_tailed_net(), plan, data, model=ModelSection(), train=train,
                             augment=AugmentSection(), budget=budget, device=torch.device("cpu"), seed=0,
                             out_dir=Path(out_dir), resume=False, fingerprint="f").result
        report.update(outcome="trained", measured=result.blocks[0].measured_peak_bytes)
    except Exception as exc:  # noqa: BLE001 - the scenario reports what stopped it
        report.update(outcome=type(exc).__name__, message=str(exc))
    return report


def _hand_picked_step_peak(plan, batch: int) -> int:
    """What the tracker saw before this change: one step, seeded from the block's own modules only."""
    from nfcompile.learning import local_step, make_optimizer
    from nfcompile.models import AuxHead

    unit = _fat_tailed_net().units[0]
    head = AuxHead(plan.units[0].out_shape[0], plan.units[0].head_filters, TINY_CLASSES)
    optimizer = make_optimizer([*unit.parameters(), *head.parameters()], _section(), batch)
    meter = PeakMeter(torch.device("cpu"), [unit, head], [optimizer])
    for _ in range(2):  # the second step holds the optimizer state
        with meter.step():
            x, y = torch.randn(batch, 3, TINY_SIZE, TINY_SIZE), torch.randint(0, TINY_CLASSES, (batch,))
            local_step(unit, head, x, y, optimizer)
            del x, y
    return meter.reading.total


def test_the_rest_of_the_network_escaped_the_old_accounting(tmp_path):
    old = run_isolated(__file__, "block_zero_trained", out_dir=str(tmp_path), count_the_rest=False)
    # The old plan and the old hand-picked tracker both said the block fits ...
    assert old["predicted"] <= old["budget"] and old["hand_picked_first_step"] <= old["budget"]
    # ... while the whole process held more: the independent meter fails the block and names why.
    assert old["outcome"] == "BudgetExceeded", old
    assert "other resident tensors" in old["message"]


def test_the_plan_counts_it_and_the_run_stays_within_the_budget(tmp_path):
    old = run_isolated(__file__, "block_zero_trained", out_dir=str(tmp_path / "old"), count_the_rest=False)
    new = run_isolated(__file__, "block_zero_trained", out_dir=str(tmp_path / "new"), count_the_rest=True)
    assert new["outcome"] == "trained", new
    assert new["batch"] < old["batch"]  # the rest of the network took its share of the budget
    assert new["measured"] <= new["budget"]
    assert abs(new["predicted"] - new["measured"]) <= 0.10 * new["measured"]


def _minimum(count_the_rest: bool, monkeypatch) -> int:
    if not count_the_rest:
        monkeypatch.setattr(planning.Resident, "besides", lambda self, units: 0)
    plan = plan_training(_fat_tailed_net(), TINY_CLASSES, image_size=TINY_SIZE, train_samples=32, val_samples=16,
                         budget=BudgetSection(memory="64MiB"), train=_section(), augment=AugmentSection(),
                         device=torch.device("cpu"))
    monkeypatch.undo()
    return plan.min_budget_bytes


def test_a_budget_the_rest_of_the_network_fills_is_refused_before_training(monkeypatch):
    from nfcompile.errors import BudgetError

    old, new = _minimum(False, monkeypatch), _minimum(True, monkeypatch)
    assert new > old
    between = BudgetSection(memory=(old + new) // 2)
    plan_kwargs = dict(image_size=TINY_SIZE, train_samples=32, val_samples=16, budget=between, train=_section(),
                       augment=AugmentSection(), device=torch.device("cpu"))
    monkeypatch.setattr(planning.Resident, "besides", lambda self, units: 0)
    plan_training(_fat_tailed_net(), TINY_CLASSES, **plan_kwargs)  # the old accounting planned it
    monkeypatch.undo()
    with pytest.raises(BudgetError, match="rest of the network"):
        plan_training(_fat_tailed_net(), TINY_CLASSES, **plan_kwargs)


def whole_block_against_memtracker() -> dict:
    """One NeuroFlux block trained for two epochs under our meter and torch's MemTracker at once."""
    from torch.distributed._tools.mem_tracker import MemTracker

    from nfcompile.data.batches import Augment
    from nfcompile.data.sources import ImageInput
    from nfcompile.learning import fit, local_step, make_optimizer
    from nfcompile.models import AuxHead

    data = make_tiny_data(train=96, val=32, test=32)
    net = _fat_tailed_net()
    units = list(net.units[:2])
    heads = [AuxHead(8, 8, TINY_CLASSES), AuxHead(16, 8, TINY_CLASSES)]
    optimizers = [make_optimizer([*u.parameters(), *h.parameters()], _section(), 16) for u, h in zip(units, heads)]

    def chained(h, y, lr):
        losses = []
        for unit, head, optimizer in zip(units, heads, optimizers):
            h, loss = local_step(unit, head, h, y, optimizer)
            losses.append(loss)
        return losses

    source = ImageInput(data.train, data.preprocessing, Augment(shift=1), torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = MemTracker()
        # Everything alive at the start, as our meter's scan finds it (the training images aside).
        theirs.track_external(net, *heads, *optimizers)
        ours = BlockMeter(torch.device("cpu"), seeded={"block weights": [t for m in [net, *heads]
                                                                           for t in (*m.parameters(), *m.buffers())]},
                          exclude=[s.images for s in (data.train, data.val, data.test)])
        with theirs, ours:
            fit(chained, source, batch_size=16, epochs=range(2), lr_at=lambda s: 0.05,
                generator_for=lambda e: generator, train_modules=[*units, *heads],
                after_step=theirs.reset_mod_stats)  # MemTracker keeps per-module stats per call
        their_peak = theirs.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    labels = sum(s.labels.untyped_storage().nbytes() for s in (data.train, data.val, data.test))
    return {"ours": ours.reading.peak, "theirs": their_peak, "labels": labels, "steps": 2 * 6}


def test_the_whole_block_meter_agrees_with_torch_memtracker():
    result = run_isolated(__file__, "whole_block_against_memtracker")
    # Our scan also finds the dataset's label tensors, which MemTracker is not told about.
    assert result["ours"] - result["labels"] == result["theirs"], result
