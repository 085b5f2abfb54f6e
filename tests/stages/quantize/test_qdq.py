"""quantize_int8: a TensorRT-ready QDQ file (INT8, zero points 0) whose accuracy drop is measured."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from conftest import TINY_SIZE, make_tiny_data, make_tiny_multi_exit
from nfcompile.errors import InputError, StageSkipped
from nfcompile.recipe.schema import QuantizeSection, ValidateSection
from nfcompile.runtime.onnx_io import export_onnx
from nfcompile.runtime.ort_runner import OrtRunner
from nfcompile.stages.quantize import quantize_int8, zero_point_violations
from nfcompile.stages.validate import int8_checks, validate_onnx

SAMPLE = (3, TINY_SIZE, TINY_SIZE)


def trained_exit(steps: int = 20):
    """The tiny exit after a few full-batch steps, so that accuracy means something."""
    data = make_tiny_data()
    module = make_tiny_multi_exit().exit_net(2)
    x, y = data.preprocessing.normalize(data.train.images), data.train.labels
    optimizer = torch.optim.Adam(module.parameters(), lr=2e-2)
    module.train()
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(module(x), y).backward()
        optimizer.step()
    return module.eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    data = make_tiny_data()
    module = trained_exit()
    out_dir = tmp_path_factory.mktemp("quantize")
    export_onnx(module, out_dir / "model.onnx", input_shape=SAMPLE, exporter="torchscript", opset=18,
                metadata={"recipe": "tiny"})
    splits = {name: (data.preprocessing.normalize(part.images).numpy(), part.labels.numpy())
              for name, part in (("train", data.train), ("test", data.test))}
    return module, out_dir, splits


@pytest.fixture(scope="module")
def quantized(setup):
    _, out_dir, splits = setup
    return quantize_int8(out_dir / "model.onnx", QuantizeSection(calibration_samples=48),
                         calibration_inputs=splits["train"][0], out_dir=out_dir)


def dequantize_nodes_of_weights(model):
    weights = {init.name for init in model.graph.initializer if init.data_type == onnx.TensorProto.INT8}
    return [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights
            and len(numpy_helper.to_array(_initializer(model, n.input[0])).shape) > 1]


def _initializer(model, name):
    return next(init for init in model.graph.initializer if init.name == name)


def test_file_is_written_with_its_description(setup, quantized):
    _, out_dir, _ = setup
    path = out_dir / "model.int8.onnx"
    assert quantized.path == "model.int8.onnx" and quantized.source == "model.onnx"
    assert sorted(p.name for p in out_dir.iterdir()) == ["model.int8.onnx", "model.onnx"]  # no temporaries
    assert quantized.bytes == path.stat().st_size
    assert quantized.calibration_samples == 48 and quantized.calibration_method == "minmax"
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["recipe"] == "tiny" and "48 training samples" in props["quantization"]
    assert quantized.quantized_tensors == sum(n.op_type == "DequantizeLinear" for n in model.graph.node) > 0


def test_every_zero_point_is_int8_zero(setup, quantized):
    _, out_dir, _ = setup
    model = onnx.load(str(out_dir / "model.int8.onnx"))
    assert zero_point_violations(model) == []
    zero_points = [_initializer(model, n.input[2]) for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert zero_points and all(z.data_type == onnx.TensorProto.INT8 for z in zero_points)
    assert all(not numpy_helper.to_array(z).any() for z in zero_points)


def test_weights_are_int8_per_channel_and_biases_stay_float(setup, quantized):
    _, out_dir, _ = setup
    model = onnx.load(str(out_dir / "model.int8.onnx"))
    weight_dq = dequantize_nodes_of_weights(model)
    assert weight_dq, "conv/linear weights must be stored as INT8"
    conv_scales = [numpy_helper.to_array(_initializer(model, n.input[1])) for n in weight_dq]
    assert any(scale.size > 1 for scale in conv_scales)  # one scale per output channel
    assert not any(init.data_type == onnx.TensorProto.INT32 for init in model.graph.initializer)


def test_per_tensor_weights_when_the_recipe_says(setup, tmp_path):
    _, out_dir, splits = setup
    quantize_int8(out_dir / "model.onnx", QuantizeSection(per_channel=False, calibration_samples=16),
                  calibration_inputs=splits["train"][0], out_dir=tmp_path)
    model = onnx.load(str(tmp_path / "model.int8.onnx"))
    scales = [numpy_helper.to_array(_initializer(model, n.input[1])) for n in dequantize_nodes_of_weights(model)]
    assert scales and all(scale.size == 1 for scale in scales)


def test_accuracy_drop_is_measured_against_pytorch(setup, quantized):
    module, out_dir, splits = setup
    inputs, labels = splits["test"]
    comparison = validate_onnx(module, out_dir / "model.int8.onnx", ValidateSection(), inputs=inputs, labels=labels)
    (check,) = int8_checks(comparison, QuantizeSection())
    assert check.value == pytest.approx(comparison.reference_accuracy - comparison.candidate_accuracy)
    assert comparison.reference_accuracy >= 0.9  # the trained exit is worth quantizing
    assert comparison.top1_agreement >= 0.9
    assert 0 < comparison.max_abs_error < 1.0  # really quantized: not bit-identical, yet close


@pytest.mark.parametrize("batch", [1, 7])
def test_dynamic_batch_survives_quantization(setup, quantized, batch):
    _, out_dir, splits = setup
    with OrtRunner(out_dir / "model.int8.onnx") as runner:
        assert runner.infer({"input": splits["test"][0][:batch]})["logits"].shape == (batch, 4)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods(setup, tmp_path, method):
    _, out_dir, splits = setup
    result = quantize_int8(out_dir / "model.onnx", QuantizeSection(calibration_method=method, calibration_samples=16),
                           calibration_inputs=splits["train"][0], out_dir=tmp_path)
    assert result.calibration_method == method
    assert zero_point_violations(onnx.load(str(tmp_path / "model.int8.onnx"))) == []


def test_violations_are_found(setup, quantized):
    _, out_dir, _ = setup
    model = onnx.load(str(out_dir / "model.int8.onnx"))
    node = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    zero_point = _initializer(model, node.input[2])
    zero_point.CopyFrom(numpy_helper.from_array(np.array(3, dtype=np.int8), zero_point.name))
    other = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[2] != node.input[2])
    del other.input[2]
    problems = zero_point_violations(model)
    assert f"{node.name}: zero point is not 0" in problems
    assert f"{other.name}: no zero point (means uint8)" in problems


def test_disabled_and_empty_calibration(setup, tmp_path):
    _, out_dir, splits = setup
    with pytest.raises(StageSkipped, match="quantize.enabled: false"):
        quantize_int8(out_dir / "model.onnx", QuantizeSection(enabled=False),
                      calibration_inputs=splits["train"][0], out_dir=tmp_path)
    with pytest.raises(InputError, match="no calibration samples"):
        quantize_int8(out_dir / "model.onnx", QuantizeSection(), calibration_inputs=splits["train"][0][:0],
                      out_dir=tmp_path)
    assert not (tmp_path / "model.int8.onnx").exists()
