"""Global masks, the exponential schedule and sparsity counting."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import make_tiny_multi_exit, make_tiny_unit_net
from nfcompile.stages.prune.masks import (apply_masks, exponential_schedule, global_masks, layer_sparsity,
                                          prunable_weights, weight_sparsity)


def test_prunable_weights_are_conv_and_linear_weights_once_each():
    net = make_tiny_multi_exit()
    names = list(prunable_weights(net))
    assert all(name.endswith(".weight") for name in names)
    modules = dict(net.named_modules())
    assert all(isinstance(modules[name.removesuffix(".weight")], (nn.Conv2d, nn.Linear)) for name in names)
    # heads["2"] is an AuxHead: conv + linear; the trunk's convs appear once although shared.
    assert len(names) == 3 + 2 * 3 + 1
    assert len({id(w) for w in prunable_weights(net).values()}) == len(names)


def test_exponential_schedule_removes_the_same_share_each_round():
    schedule = exponential_schedule(0.9, 5)
    assert schedule[-1] == pytest.approx(0.9)
    kept = [1.0] + [1 - s for s in schedule]
    ratios = [b / a for a, b in zip(kept, kept[1:])]
    assert ratios == pytest.approx([0.1 ** 0.2] * 5)
    with pytest.raises(ValueError):
        exponential_schedule(1.0, 3)


def test_global_masks_rank_across_layers_and_hit_the_count_exactly():
    scores = {"a": torch.arange(10.0).view(2, 5), "b": torch.arange(10.0, 30.0)}  # b scores higher
    masks = global_masks(scores, 0.4)
    assert sum(int((~m).sum()) for m in masks.values()) == 12
    assert not masks["a"].any() and int((~masks["b"]).sum()) == 2  # a goes first: ranking is global
    assert masks["a"].shape == (2, 5)


def test_global_masks_only_shrink():
    first = global_masks({"a": torch.tensor([5.0, 1.0, 4.0, 2.0])}, 0.25)
    assert first["a"].tolist() == [True, False, True, True]
    # Weight 1 scores highest now, yet stays pruned; the next lowest alive goes.
    second = global_masks({"a": torch.tensor([5.0, 9.0, 4.0, 2.0])}, 0.5, first)
    assert second["a"].tolist() == [True, False, True, False]
    with pytest.raises(ValueError, match="masks only shrink"):
        global_masks({"a": torch.ones(4)}, 0.25, second)


def test_applied_masks_are_counted_as_zeros():
    net = make_tiny_unit_net()
    weights = prunable_weights(net)
    masks = global_masks({name: w.detach().abs() for name, w in weights.items()}, 0.7)
    apply_masks(weights, masks)
    zeros, total = weight_sparsity(net)
    assert total == sum(w.numel() for w in weights.values())
    assert zeros == round(0.7 * total)
    per_layer = layer_sparsity(net)
    assert set(per_layer) == set(weights)
    assert len(set(round(v, 3) for v in per_layer.values())) > 1  # global ranking is uneven
