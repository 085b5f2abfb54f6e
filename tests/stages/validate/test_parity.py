"""validate_onnx / validate_engine: exports against PyTorch on the held-out split."""

from __future__ import annotations

import pytest

from conftest import TINY_SIZE, make_tiny_data, make_tiny_multi_exit
from nfcompile.errors import StageSkipped
from nfcompile.recipe.schema import ValidateSection
from nfcompile.runtime.onnx_io import export_onnx
from nfcompile.runtime.tensorrt import tensorrt_unavailable_reason
from nfcompile.stages.validate import fp32_checks, require_passed, validate_engine, validate_onnx


@pytest.fixture(scope="module")
def exit_and_onnx(tmp_path_factory):
    module = make_tiny_multi_exit().exit_net(2)
    path = export_onnx(module, tmp_path_factory.mktemp("validate") / "model.onnx",
                       input_shape=(3, TINY_SIZE, TINY_SIZE), exporter="torchscript", opset=18).path
    return module, path


@pytest.fixture(scope="module")
def test_split():
    data = make_tiny_data()
    return data.preprocessing.normalize(data.test.images).numpy(), data.test.labels.numpy()


def test_fp32_onnx_matches_pytorch_on_the_test_split(exit_and_onnx, test_split):
    module, path = exit_and_onnx
    inputs, labels = test_split
    comparison = validate_onnx(module, path, ValidateSection(), inputs=inputs, labels=labels)
    assert comparison.samples == len(labels) == 32
    assert comparison.max_abs_error <= 1e-4
    assert comparison.top1_agreement == 1.0
    assert comparison.reference_accuracy == comparison.candidate_accuracy is not None
    assert "model.onnx" in comparison.candidate and comparison.reference == "pytorch (cpu)"
    require_passed(fp32_checks(comparison, ValidateSection()), "fp32 onnx")  # the default gates pass


def test_samples_limits_the_held_out_inputs(exit_and_onnx, test_split):
    module, path = exit_and_onnx
    inputs, labels = test_split
    comparison = validate_onnx(module, path, ValidateSection(samples=10), inputs=inputs, labels=labels,
                               batch_size=4)
    assert comparison.samples == 10


def test_fixed_batch_graph_runs_at_its_own_batch(test_split, tmp_path):
    module = make_tiny_multi_exit().exit_net(1)
    path = export_onnx(module, tmp_path / "model.onnx", input_shape=(3, TINY_SIZE, TINY_SIZE),
                       exporter="torchscript", opset=18, dynamic_batch=False).path
    inputs, labels = test_split
    comparison = validate_onnx(module, path, ValidateSection(), inputs=inputs, labels=labels)
    assert comparison.samples == len(inputs) and comparison.max_abs_error <= 1e-4


def test_engine_validation_is_skipped_with_the_reason_here(exit_and_onnx, test_split, tmp_path):
    reason = tensorrt_unavailable_reason()
    if reason is None:
        pytest.skip("tensorrt and CUDA are available here")
    module, _ = exit_and_onnx
    inputs, labels = test_split
    with pytest.raises(StageSkipped) as skipped:
        validate_engine(module, tmp_path / "model.engine", ValidateSection(), inputs=inputs, labels=labels)
    assert skipped.value.reason == reason
