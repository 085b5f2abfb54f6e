"""Static INT8 quantization to a QDQ ONNX model, for TensorRT (explicit quantization) or ONNX Runtime.

ONNX Runtime's `quantize_static` calibrates activation ranges on samples from the training split.
Weights are signed INT8 and symmetric, with per-channel scales where the recipe asks (biases: below).
Activations come in one of two formats
(`quantize.activations`, resolved by `activation_format`):

- int8: signed and symmetric, every zero point 0: what TensorRT's explicit quantization accepts. The
  written graph is checked for zero points before it lands.
- uint8: unsigned, with the zero point calibration gives. ONNX Runtime's x86 CPU kernels run
  uint8 activations against int8 weights; signed activations take a slower path there. On a 2-core
  Intel Xeon (AVX-512 VNNI, AMX), the quickstart's exit ran 2.1x (batch 1) and 2.5x (batch 32) faster
  than FP32 as uint8 and at 0.54x and 0.49x FP32's speed as int8, at the same test accuracy
  (benchmarks/results/2026-12-05-int8-activations.json, `python -m benchmarks.int8_activations`).
  Post-ReLU activations are non-negative, so uint8 also spends all 256 levels on them where
  symmetric int8 spends 128.

The graph must also be one every onnxruntime tool takes and that computes the same at every graph
optimization level. Biases are quantized by onnxruntime (to INT32 at input scale x weight scale, as
its fused kernels use them): with plain FP32 biases onnxruntime's optimizer re-quantized them itself,
so ORT_DISABLE_ALL computed another function (up to 0.36 apart on the logits of the tiny test model,
against 0.06 now). The uint8 graph keeps those INT32 biases behind their DequantizeLinear, ONNX
Runtime's own QDQ form. The int8 graph is for TensorRT, which has no INT32 DequantizeLinear: each
bias DequantizeLinear of a constant is folded back to an FP32 constant holding exactly those values.
(Folded, a uint8 graph fails onnxruntime's runtime-style ORT conversion: its optimizer builds a
malformed bias DequantizeLinear for the Conv; onnxruntime 1.32.) The classifier's output (the graph
output) is not quantized: logits stay FP32, as every caller reads them. Accuracy is not judged
here: the validate stage compares this model with PyTorch and the gate bounds the accuracy drop.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from nfcompile.core.io import atomic_path, sha256_file
from nfcompile.core.log import get_logger
from nfcompile.core.results import QuantResult
from nfcompile.errors import InputError, NfcompileError, StageSkipped
from nfcompile.recipe.schema import QuantizeSection, TensorRTSection
from nfcompile.runtime.onnx_io import set_metadata

log = get_logger(__name__)

INT8_ONNX_FILE = "model.int8.onnx"
CALIBRATION_BATCH_SIZE = 32
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


class QuantizationError(NfcompileError):
    """onnxruntime produced a graph TensorRT cannot use (a bug here or there, not the user's)."""


ACTIVATION_FORMATS = ("int8", "uint8")


def activation_format(section: QuantizeSection, *, bench_backend: str, tensorrt: TensorRTSection) -> str:
    """``section.activations`` resolved: auto is int8 where TensorRT takes the model (an INT8 engine is
    built from it, or the bench backend is not ONNX Runtime on the CPU), else uint8."""
    if section.activations != "auto":
        return section.activations
    engine_int8 = tensorrt.enabled and tensorrt.precision == "int8"
    return "int8" if engine_int8 or bench_backend != "ort-cpu" else "uint8"


def quantize_int8(onnx_path: str | Path, section: QuantizeSection, *, calibration_inputs: np.ndarray,
                  out_dir: str | Path, activations: str = "int8") -> QuantResult:
    """Write ``out_dir/model.int8.onnx`` from the FP32 ONNX at ``onnx_path``.

    ``calibration_inputs`` are preprocessed samples of the training split (N, C, H, W); the first
    ``section.calibration_samples`` of them calibrate the activation ranges. ``activations``: int8
    (TensorRT-ready) or uint8 (`activation_format` resolves the recipe's choice).
    """
    if activations not in ACTIVATION_FORMATS:
        raise ValueError(f"activations {activations!r}: one of {ACTIVATION_FORMATS}")
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_static

    if not section.enabled:
        raise StageSkipped("disabled in the recipe (quantize.enabled: false)")
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    samples = calibration_inputs[: section.calibration_samples].astype(np.float32, copy=False)
    if len(samples) == 0:
        raise InputError("no calibration samples: the training split is empty",
                         hint="quantize.calibration_samples draws from the training split")
    if len(samples) < section.calibration_samples:
        log.info("quantize: %d calibration samples available of the %d asked for (quantize.calibration_samples)",
                 len(samples), section.calibration_samples)
    source = onnx.load(str(onnx_path))
    input_name = source.graph.input[0].name
    path = out_dir / INT8_ONNX_FILE
    with atomic_path(path) as tmp, tempfile.TemporaryDirectory(dir=out_dir, prefix=".quantize-") as work:
        # Shape inference and graph cleanup first, as onnxruntime recommends before quantize_static;
        # stdout is silenced because the calibrators print progress there, and it is kept for results.
        prepared = Path(work) / "prepared.onnx"
        with contextlib.redirect_stdout(io.StringIO()):
            quant_pre_process(str(onnx_path), str(prepared))
            quantize_static(
                str(prepared), str(tmp), _CalibrationReader(input_name, samples, CALIBRATION_BATCH_SIZE),
                quant_format=QuantFormat.QDQ, per_channel=section.per_channel, reduce_range=False,
                activation_type=QuantType.QInt8 if activations == "int8" else QuantType.QUInt8,
                weight_type=QuantType.QInt8, calibrate_method=_calibration_method(section.calibration_method),
                extra_options={"ActivationSymmetric": activations == "int8", "WeightSymmetric": True,
                               "QuantizeBias": True,
                               "DedicatedQDQPair": True,
                               "OpTypesToExcludeOutputQuantization": _output_op_types(prepared)},
            )
        quantized = onnx.load(str(tmp))
        if activations == "int8":
            fold_bias_dequantize(quantized)  # TensorRT has no INT32 DequantizeLinear
        violations = zero_point_violations(quantized) if activations == "int8" else []
        if violations:
            raise QuantizationError(f"onnxruntime wrote {len(violations)} zero point(s) TensorRT rejects, "
                                    f"first: {violations[0]}", hint="report this with the onnxruntime version")
        # The FP32 file's metadata (recipe, exit, preprocessing, labels) travels, plus how this file was made.
        set_metadata(quantized, {prop.key: prop.value for prop in source.metadata_props})
        set_metadata(quantized, {"quantization": _describe(section, activations, len(samples))})
        onnx.checker.check_model(quantized)
        onnx.save_model(quantized, str(tmp))
    log.info("quantize: %s written (%s)", path.name, _describe(section, activations, len(samples)))
    return QuantResult(path=INT8_ONNX_FILE, source=onnx_path.name, calibration_samples=int(len(samples)),
                       calibration_method=section.calibration_method, per_channel=section.per_channel,
                       symmetric=activations == "int8", activations=activations,
                       quantized_tensors=_count(quantized, "DequantizeLinear"),
                       bytes=path.stat().st_size, sha256=sha256_file(path))


class _CalibrationReader:
    """Feeds the calibration samples to onnxruntime in batches (its CalibrationDataReader protocol)."""

    def __init__(self, input_name: str, samples: np.ndarray, batch_size: int):
        self.input_name = input_name
        self.samples = samples
        self.batch_size = batch_size
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.samples):
            return None
        batch = self.samples[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return {self.input_name: np.ascontiguousarray(batch)}

    def rewind(self) -> None:
        self.position = 0


def _output_op_types(model_path: Path) -> list[str]:
    """Op types of the nodes that produce the graph's outputs (the classifier's Gemm)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    outputs = {value.name for value in model.graph.output}
    return sorted({node.op_type for node in model.graph.node if outputs & set(node.output)})


def fold_bias_dequantize(model: Any) -> int:
    """Replace every DequantizeLinear of an INT32 constant (a quantized bias) by the FP32 constant it
    computes, (q - zero_point) * scale; returns how many. A constant fold of three known tensors, done
    here because onnxruntime's quantizer has no option to quantize biases yet store them as FP32."""
    from onnx import TensorProto, numpy_helper

    constants = {init.name: init for init in model.graph.initializer}
    kept, folded = [], []
    for node in model.graph.node:
        source = constants.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if source is None or source.data_type != TensorProto.INT32 or not all(n in constants for n in node.input):
            kept.append(node)
            continue
        # In float32, as DequantizeLinear computes it: the folded graph gives the unfolded one's values.
        values = numpy_helper.to_array(source).astype(np.float32)
        scale = numpy_helper.to_array(constants[node.input[1]]).astype(np.float32)
        zero = numpy_helper.to_array(constants[node.input[2]]).astype(np.float32) if len(node.input) > 2 and \
            node.input[2] else np.float32(0)
        folded.append(numpy_helper.from_array(((values - zero) * scale).astype(np.float32), node.output[0]))
    if folded:
        del model.graph.node[:]
        model.graph.node.extend(kept)
        used = {name for node in kept for name in node.input}
        live = [init for init in model.graph.initializer if init.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend([*live, *folded])
    return len(folded)


def _calibration_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]


def _describe(section: QuantizeSection, activations: str, samples: int) -> str:
    weights = "per-channel" if section.per_channel else "per-tensor"
    kind = ("int8 activations, symmetric (TensorRT-ready)" if activations == "int8"
            else "uint8 activations, asymmetric (ONNX Runtime CPU)")
    return (f"static QDQ, {kind}, int8 symmetric {weights} weights, {section.calibration_method} calibration "
            f"on {samples} training samples")


def _count(model: Any, op_type: str) -> int:
    return sum(node.op_type == op_type for node in model.graph.node)


def zero_point_violations(model: Any) -> list[str]:
    """Every Q/DQ zero point that is not a signed INT8 zero, as 'node: why'. Empty when TensorRT-ready.

    A missing zero point means 0 of type uint8 in ONNX, which TensorRT also rejects, so every
    QuantizeLinear/DequantizeLinear must name an INT8 zero point that holds only zeros.
    """
    from onnx import TensorProto, numpy_helper

    constants = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    problems = []
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        label = node.name or node.output[0]
        if len(node.input) < 3 or not node.input[2]:
            problems.append(f"{label}: no zero point (means uint8)")
            continue
        tensor = constants.get(node.input[2])
        if tensor is None:
            problems.append(f"{label}: zero point {node.input[2]!r} is not a constant")
        elif tensor.data_type != TensorProto.INT8:
            problems.append(f"{label}: zero point of type {TensorProto.DataType.Name(tensor.data_type)}, not INT8")
        elif np.any(numpy_helper.to_array(tensor) != 0):
            problems.append(f"{label}: zero point is not 0")
    return problems
