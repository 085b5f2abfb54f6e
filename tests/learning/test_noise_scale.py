"""The gradient noise scale estimator (McCandlish et al. 2018, appendix A) on problems whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nfcompile.learning.noise_scale import _b_simple, noise_scales


class Samples:
    """An input source over in-memory tensors, as the trainers read one."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def fetch(self, indices, generator, *, train):
        return self.x[indices], self.y[indices]


def _scale(x, y, *, unit=None, head=None) -> float:
    torch.manual_seed(0)
    unit = unit or nn.Linear(x.shape[1], 8)
    head = head or nn.Linear(8, 3)
    (scale,) = noise_scales([unit], [head], Samples(x, y), batch=32, batches=8, micro_batches=4,
                            generator=torch.Generator().manual_seed(0))
    return scale


def test_the_estimator_recovers_the_noise_scale_from_squared_norms_at_two_batch_sizes():
    # E|g_B|^2 = |G|^2 + tr(Sigma) / B: with |G|^2 = 0.5 and tr(Sigma) = 20 the noise scale is 40.
    signal, noise = 0.5, 20.0
    assert _b_simple(signal + noise / 8, signal + noise / 32, 8, 32) == pytest.approx(40.0)
    # A big batch's gradient that shrank more than averaging noise explains leaves no signal to divide by.
    assert _b_simple(4.0, 0.5, 8, 32) == math.inf
    # One no smaller than the small batches' shows no noise: not measurable either, never a batch of 0.
    assert _b_simple(1.0, 1.0, 8, 32) == math.inf


def test_nearly_identical_samples_have_a_small_noise_scale():
    torch.manual_seed(3)
    x = torch.randn(1, 6).repeat(256, 1) + 0.01 * torch.randn(256, 6)
    y = torch.zeros(256, dtype=torch.long)
    assert 0 < _scale(x, y) < 0.1


def test_labels_that_ignore_the_input_are_noisier_than_labels_the_input_decides():
    torch.manual_seed(1)
    x = torch.randn(512, 6)
    decided = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    random = torch.randint(0, 3, (512,))
    assert _scale(x, random) > 2 * _scale(x, decided)


def test_the_units_are_left_exactly_as_they_were():
    torch.manual_seed(2)
    unit = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU())
    head = nn.Linear(8, 3)
    unit.eval()
    head.weight.grad = torch.ones_like(head.weight)  # a caller's gradient is kept
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (unit, head)]
    _scale(torch.randn(128, 6), torch.randint(0, 3, (128,)), unit=unit, head=head)
    for module, state in zip((unit, head), before):
        after = module.state_dict()
        assert all(torch.equal(after[k], v) for k, v in state.items())  # BatchNorm statistics too
    assert torch.equal(head.weight.grad, torch.ones_like(head.weight)) and head.bias.grad is None
    assert all(p.grad is None for p in unit.parameters())
    assert not unit.training and head.training


def test_a_batch_too_small_to_split_is_refused():
    with pytest.raises(ValueError, match="micro-batches"):
        noise_scales([nn.Linear(2, 2)], [nn.Linear(2, 2)], Samples(torch.randn(8, 2), torch.zeros(8).long()),
                     batch=6, batches=1, micro_batches=4, generator=torch.Generator())
