"""The gradient-filter comparison's own measurement: two fine-tuning runs from the same weights and an
interleaved step timing (benchmarks/comparisons/gradient_filter.py)."""

from __future__ import annotations

import sys

import pytest
import torch

from conftest import REPO, make_pretrained_tiny
from nfcompile.recipe.schema import GradientFilterSection, TrainSection

if str(REPO) not in sys.path:  # `benchmarks` lives beside the package, not inside it
    sys.path.insert(0, str(REPO))

from benchmarks.comparisons.gradient_filter import FilterComparison, compare_gradient_filter  # noqa: E402


def test_comparison_with_backprop_on_the_same_layers():
    model, data = make_pretrained_tiny()
    section = TrainSection(method="gradient_filter", epochs=2, patience=0, optimizer="adam", lr=0.01, batch_size=16,
                           reference_batch_size=16, gradient_filter=GradientFilterSection(layers=2, patch=2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = compare_gradient_filter(model, data, section, device=torch.device("cpu"), seed=0)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # the input is untouched
    assert result.filtered.method == "gradient_filter" and result.backprop.method == "backprop"
    assert result.filtered.layers == result.backprop.layers
    assert result.filtered.saved_activation_bytes < result.backprop.saved_activation_bytes
    assert result.model_memory_reduction > 1.0 and result.layer_memory_reduction > 3.0
    assert result.step_speedup == result.backprop_step_seconds / result.filtered_step_seconds > 0
    assert result.accuracy_gap_points == pytest.approx(
        100 * (result.backprop.test_accuracy - result.filtered.test_accuracy))
    assert FilterComparison.from_dict(result.to_dict()) == result
