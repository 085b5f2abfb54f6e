"""The four ranking criteria, checked against their definitions."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from conftest import make_tiny_data, make_tiny_unit_net
from nfcompile.data import image_batches
from nfcompile.stages.prune.masks import full_masks, global_masks, prunable_weights
from nfcompile.stages.prune.scores import (drive_scores, linearized_copy, magnitude_scores, mean_gradients,
                                           snip_scores, synflow_scores)


def _batches(count: int = 2):
    data = make_tiny_data()
    return list(image_batches(data.train, 16, data.preprocessing, device=torch.device("cpu")))[:count]


def test_mean_gradients_average_batches_and_leave_batchnorm_statistics_alone():
    net = make_tiny_unit_net()
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    batches = _batches(2)
    grads = mean_gradients(net, batches)
    assert all(torch.equal(buffers[k], v) for k, v in net.named_buffers())
    # The same average by hand (batch statistics as in training, then the running stats restored).
    by_hand = copy.deepcopy(net).train()
    for x, y in batches:
        (F.cross_entropy(by_hand(x), y) / len(batches)).backward()
    for name, w in prunable_weights(by_hand).items():
        torch.testing.assert_close(grads[name], w.grad)


def test_snip_and_magnitude_follow_their_definitions():
    net = make_tiny_unit_net()
    grads = mean_gradients(net, _batches(1))
    weights = prunable_weights(net)
    for name, score in snip_scores(net, grads).items():
        torch.testing.assert_close(score, (weights[name] * grads[name]).abs().detach())
    for name, score in magnitude_scores(net).items():
        torch.testing.assert_close(score, weights[name].abs().detach())


def test_drive_combines_three_normalized_terms_over_alive_weights():
    net = make_tiny_unit_net()
    grads = mean_gradients(net, _batches(1))
    masks = full_masks(prunable_weights(net))
    scores = drive_scores(net, grads, masks)
    assert abs(sum(float(s.sum()) for s in scores.values()) - 3.0) < 1e-4  # each term sums to 1
    # Its ranking differs from each of its parts alone: all three terms matter.
    drive_keep = global_masks(scores, 0.5)
    for part in (magnitude_scores(net), snip_scores(net, grads), {k: g.abs() for k, g in grads.items()}):
        other = global_masks(part, 0.5)
        assert any(not torch.equal(drive_keep[k], other[k]) for k in drive_keep)
    # Normalization is over the weights still alive: pruned weights do not dilute the terms.
    half = global_masks(scores, 0.5)
    rescored = drive_scores(net, grads, half)
    alive = sum(float((rescored[k] * half[k]).sum()) for k in rescored)
    assert abs(alive - 3.0) < 1e-4


def test_synflow_is_data_free_conserves_flow_and_leaves_the_model_alone():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5, bias=False), nn.ReLU(), nn.Linear(5, 4, bias=False), nn.ReLU(),
                        nn.Linear(4, 3, bias=False))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    linear = linearized_copy(net)
    scores = synflow_scores(linear, full_masks(prunable_weights(net)), (6,))
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    # Without biases, every layer carries the whole synaptic flow R (Tanaka et al. 2020).
    with torch.no_grad():
        flow = float(linear(torch.ones(1, 6, dtype=torch.float64)).sum())
    for score in scores.values():
        assert abs(float(score.sum()) - flow) < 1e-9 * flow
    # A pruned weight carries no flow.
    masks = global_masks(scores, 0.5)
    rescored = synflow_scores(linear, masks, (6,))
    assert all(float(rescored[k][~masks[k]].abs().sum()) == 0.0 for k in masks)
