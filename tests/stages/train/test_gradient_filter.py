"""Gradient filtering: exactness where the paper's formulas are exact, shapes, measured memory,
and fine-tuning that converges on the tiny fixture."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import make_pretrained_tiny, make_tiny_unit_net
from nfcompile.errors import RecipeError
from nfcompile.recipe.schema import GradientFilterSection, TrainSection
from nfcompile.stages.train.gradient_filter import (FilteredConv2dFunction,
                                                    execution_order, filtered_convs, last_conv_layers,
                                                    measure_layer_memory, train_gradient_filter)


def _patch_constant(shape: tuple[int, ...], patch: int, generator: torch.Generator) -> torch.Tensor:
    """A random (N,C,H,W) tensor constant over each patch x patch block (partial blocks at the edge)."""
    n, c, h, w = shape
    coarse = torch.randn((n, c, -(-h // patch), -(-w // patch)), generator=generator, dtype=torch.float64)
    return coarse.repeat_interleave(patch, 2).repeat_interleave(patch, 3)[..., :h, :w].contiguous()


def _filtered_and_exact(x, weight, bias, grad_y, *, stride=1, padding=0, groups=1, patch=2):
    leaves = [t.detach().requires_grad_(True) for t in (x, weight, bias)]
    y = FilteredConv2dFunction.apply(*leaves, (stride, stride), (padding, padding), (1, 1), groups, patch)
    approx = torch.autograd.grad(y, leaves, grad_y)
    exact_leaves = [t.detach().requires_grad_(True) for t in (x, weight, bias)]
    y_exact = F.conv2d(*exact_leaves, stride, padding, 1, groups)
    exact = torch.autograd.grad(y_exact, exact_leaves, grad_y)
    return y, y_exact, approx, exact


@pytest.mark.parametrize("groups,c_in,c_out,size,patch", [
    (1, 6, 4, 8, 2),   # plain conv
    (2, 6, 4, 8, 2),   # grouped
    (6, 6, 6, 8, 2),   # depthwise
    (3, 6, 12, 7, 2),  # grouped with channel multiplier, partial patches at the edge
    (1, 5, 3, 9, 3),   # R = 3
])
def test_gradients_are_exact_for_patch_constant_output_gradient(groups, c_in, c_out, size, patch):
    # The paper's formulas ignore the kernel's spatial extent, so exactness holds for pointwise
    # (1x1) convolutions at stride 1, the case where nothing else is approximated.
    g = torch.Generator().manual_seed(groups * 100 + size)
    x = torch.randn((2, c_in, size, size), generator=g, dtype=torch.float64)
    weight = torch.randn((c_out, c_in // groups, 1, 1), generator=g, dtype=torch.float64)
    bias = torch.randn((c_out,), generator=g, dtype=torch.float64)
    grad_y = _patch_constant((2, c_out, size, size), patch, g)
    y, y_exact, approx, exact = _filtered_and_exact(x, weight, bias, grad_y, groups=groups, patch=patch)
    assert torch.equal(y, y_exact)
    for name, a, e in zip(("input", "weight", "bias"), approx, exact):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10, msg=f"{name} gradient differs")


def test_gradients_differ_when_output_gradient_is_not_patch_constant():
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, 3, 8, 8), generator=g, dtype=torch.float64)
    weight = torch.randn((4, 3, 1, 1), generator=g, dtype=torch.float64)
    bias = torch.randn((4,), generator=g, dtype=torch.float64)
    grad_y = torch.randn((2, 4, 8, 8), generator=g, dtype=torch.float64)
    _, _, approx, exact = _filtered_and_exact(x, weight, bias, grad_y)
    assert not torch.allclose(approx[0], exact[0]) and not torch.allclose(approx[1], exact[1])
    torch.testing.assert_close(approx[2], exact[2])  # the bias gradient is always exact


@pytest.mark.parametrize("kernel,stride,padding,groups,size", [
    (3, 2, 1, 1, 16), (3, 2, 1, 8, 15), (1, 2, 0, 1, 16), (3, 1, 0, 2, 11), (5, 2, 2, 4, 12)])
def test_strided_grouped_and_unpadded_convs_give_gradients_of_the_right_shape(kernel, stride, padding, groups, size):
    g = torch.Generator().manual_seed(kernel + stride + groups)
    x = torch.rand((2, 8, size, size), generator=g, dtype=torch.float64)
    weight = torch.rand((16, 8 // groups, kernel, kernel), generator=g, dtype=torch.float64)
    bias = torch.rand((16,), generator=g, dtype=torch.float64)
    ones = torch.ones_like(F.conv2d(x, weight, bias, stride, padding, 1, groups))
    _, _, approx, exact = _filtered_and_exact(x, weight, bias, ones, stride=stride, padding=padding, groups=groups)
    for a, e in zip(approx, exact):
        assert a.shape == e.shape and torch.isfinite(a).all()
    # With all-positive tensors the estimates keep the exact gradients' total (border effects
    # aside): the 1/stride^2 factor is what keeps strided layers' input gradients on scale.
    for a, e in zip(approx[:2], exact[:2]):
        assert 0.7 < float(a.sum() / e.sum()) < 1.5
    assert F.cosine_similarity(approx[1].flatten(), exact[1].flatten(), dim=0) > 0.9


@pytest.mark.parametrize("stride,patch,size", [(1, 2, 32), (2, 2, 32), (1, 4, 32), (1, 2, 31)])
def test_filtered_conv_saves_about_r_times_stride_squared_less(stride, patch, size):
    conv = nn.Conv2d(8, 8, 3, stride=stride, padding=1, bias=False)
    model = nn.Sequential(conv)
    x = torch.randn(16, 8, size, size)
    [layer] = measure_layer_memory(model, ["0"], x, patch)
    expected = (patch * stride) ** 2
    assert layer.standard_bytes == x.numel() * 4  # the plain conv keeps its whole input
    assert layer.expected_reduction == expected
    assert layer.reduction == pytest.approx(expected, rel=0.1)


class _HeadFirst(nn.Module):
    """Registers its last conv first: registration order is not execution order."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(8, 8, 1)
        self.body = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))

    def forward(self, x):
        return self.head(self.body(x))


def test_last_conv_layers_follow_execution_order():
    model = _HeadFirst()
    x = torch.zeros(1, 4, 8, 8)
    assert [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)][0] == "head"
    assert execution_order(model, x, nn.Conv2d) == ["body.0", "body.2", "head"]
    assert last_conv_layers(model, x, 2) == ["body.2", "head"]
    with pytest.raises(RecipeError, match="train.gradient_filter.layers"):
        last_conv_layers(model, x, 4)


def test_filtered_convs_swap_back_and_keep_parameters():
    model = make_tiny_unit_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 16, 16)
    conv = model.units[2][0]
    expected = model(x)
    with filtered_convs(model, ["units.2.0"], patch=2) as [wrapper]:
        assert model.units[2][0] is wrapper and wrapper.conv is conv
        torch.testing.assert_close(model(x), expected)  # the forward pass is unchanged
    assert model.units[2][0] is conv
    assert model.state_dict().keys() == before.keys()


def _section(epochs: int = 5, layers: int = 2, patch: int = 2) -> TrainSection:
    return TrainSection(method="gradient_filter", epochs=epochs, patience=0, optimizer="adam", lr=0.01,
                        batch_size=16, reference_batch_size=16,
                        gradient_filter=GradientFilterSection(layers=layers, patch=patch))


@pytest.fixture(scope="module")
def pretrained_tiny():
    return make_pretrained_tiny()


def test_fine_tuning_converges_and_trains_only_the_chosen_layers(pretrained_tiny):
    source, data = pretrained_tiny
    model = copy.deepcopy(source)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    outcome = train_gradient_filter(model, data, _section(), device=torch.device("cpu"), seed=0)
    summary = outcome.summary
    assert outcome.model is model and isinstance(model.units[2][0], nn.Conv2d)
    assert summary.layers == ("units.1.0", "units.2.0") and summary.classifier == "classifier.2"
    losses = [record.train_loss[0] for record in summary.history]
    assert losses[-1] < 0.6 * losses[0]
    assert summary.test_accuracy >= 0.9  # 4 classes: chance is 0.25, the fresh classifier scores that
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # Only the two convs and the classifier moved; BatchNorm ran in eval mode (buffers unchanged).
    assert changed == {"units.1.0.weight", "units.2.0.weight", "classifier.2.weight", "classifier.2.bias"}
    assert all(p.requires_grad for p in model.parameters())  # the flags are given back
    for layer in summary.layer_memory:
        assert layer.reduction == pytest.approx(layer.expected_reduction, rel=0.15)
