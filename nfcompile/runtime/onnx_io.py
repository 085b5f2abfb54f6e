"""A torch module to one ONNX file: explicit exporter, opset, dynamic batch, metadata, atomic write,
and average pools whose last window overhangs the map rewritten to explicit padding (every runtime's form).

Used by scoring (every exit's size and latency) and by the export stage (the chosen exit).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nfcompile.core.io import atomic_path
from nfcompile.errors import NfcompileError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MAX_DYNAMIC_BATCH = 4096


class OnnxExportError(NfcompileError):
    """torch.onnx could not export the module (a bug in the model or the exporter, not the user)."""


@dataclass(frozen=True)
class OnnxFile:
    path: Path
    exporter: str
    opset: int
    bytes: int


def export_onnx(module: nn.Module, path: str | Path, *, input_shape: tuple[int, ...], exporter: str,
                opset: int, dynamic_batch: bool = True, metadata: dict[str, str] | None = None) -> OnnxFile:
    """Export ``module`` (eval mode, on CPU, float32) to ``path`` as one self-contained file."""
    import onnx

    path = Path(path)
    module = module.eval().cpu()
    # Batch 2 keeps the exporters from specializing the dynamic axis to 1; a static graph takes batch 1.
    example = torch.zeros((2 if dynamic_batch else 1, *input_shape), dtype=torch.float32)
    with atomic_path(path) as tmp, _quiet_exporter():
        if exporter == "dynamo":
            dynamic = ({0: torch.export.Dim("batch", min=1, max=MAX_DYNAMIC_BATCH)},) if dynamic_batch else None
            try:
                program = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset,
                                            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                            dynamic_shapes=dynamic, external_data=False, verbose=False)
            except Exception as exc:
                raise OnnxExportError(f"torch.onnx dynamo export failed: {str(exc).splitlines()[0]}",
                                      hint="try export.exporter: torchscript") from exc
            model = program.model_proto
        elif exporter == "torchscript":
            buffer = io.BytesIO()
            axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
            try:
                torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_axes=axes, do_constant_folding=True)
            except Exception as exc:
                raise OnnxExportError(f"torch.onnx TorchScript export failed: {str(exc).splitlines()[0]}",
                                      hint="try export.exporter: dynamo") from exc
            model = onnx.load_from_string(buffer.getvalue())
        else:
            raise ValueError(f"unknown exporter {exporter!r}")
        written = model_opset(model)
        if written != opset:  # the exporter fell back to another opset (dynamo below 18 does, with a warning)
            raise OnnxExportError(f"torch.onnx {exporter} export asked for opset {opset} but wrote opset {written}",
                                  hint=f"set export.opset: {written}, or use the other export.exporter")
        _name_batch_dim(model, dynamic_batch)
        pad_average_pool_overhang(model)
        set_metadata(model, {"exporter": exporter, **(metadata or {})})
        onnx.save_model(model, str(tmp))
    return OnnxFile(path, exporter, written, path.stat().st_size)


def model_opset(model) -> int | None:
    """The default-domain (ai.onnx) opset a model declares: what the file holds, not what was asked."""
    return next((int(entry.version) for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)


def set_metadata(model, metadata: dict[str, str]) -> None:
    """Replace-or-add `metadata_props` entries (ONNX keeps them as a list of key/value pairs)."""
    existing = {prop.key: prop for prop in model.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            prop = model.metadata_props.add()
            prop.key, prop.value = key, str(value)


def pad_average_pool_overhang(model) -> int:
    """Rewrite every AveragePool whose ``ceil_mode`` window hangs past the map's end (a head pooling a
    14x14 map by 4 to 4x4) into the same function without ceil_mode: explicit end pads, not counted
    (``count_include_pad=0``); returns how many were rewritten.

    PyTorch, and the ONNX definition, divide an overhanging window by the cells inside the map. Not every
    runtime does: ONNX Runtime 1.32's fused integer kernel (QLinearAveragePool, which the INT8 model
    runs on the CPU) divides it by the whole kernel, so the border of every such map came out
    wrong and a Fashion-MNIST ResNet-18 exit lost 3.9 points of test accuracy in INT8 (0.11 on the
    border of a 14x14 map, 0.003 inside it); CoreML and Inductor have had the same bug. Explicit
    padding with ``count_include_pad=0`` is the form every runtime implements. Written here because
    neither the exporters nor onnxsim have an option for it. Nodes with their own pads, dilations or
    auto_pad, or whose shapes shape inference cannot give, are left as they are.
    """
    import onnx
    from onnx import helper

    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes = {value.name: [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
              for value in (*inferred.value_info, *inferred.input, *inferred.output)}
    rewritten = 0
    for node in model.graph.node:
        if node.op_type != "AveragePool" or node.domain not in ("", "ai.onnx"):
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        kernel = list(attributes.get("kernel_shape", []))
        strides = list(attributes.get("strides", [1] * len(kernel)))
        if (not attributes.get("ceil_mode") or any(attributes.get("pads", [])) or
                any(d != 1 for d in attributes.get("dilations", [])) or
                attributes.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
            continue
        spatial_in = (shapes.get(node.input[0]) or [])[2:]
        spatial_out = (shapes.get(node.output[0]) or [])[2:]
        if len(spatial_in) != len(kernel) or len(spatial_out) != len(kernel) or None in (*spatial_in, *spatial_out):
            continue
        # The last window starts at (out - 1) * stride: pad the map's end up to that window's end.
        end = [(out - 1) * stride + k - size for size, out, k, stride in zip(spatial_in, spatial_out, kernel, strides)]
        if not any(end) or any(e < 0 or e >= k for e, k in zip(end, kernel)):
            continue
        del node.attribute[:]
        node.attribute.extend([helper.make_attribute("kernel_shape", kernel),
                               helper.make_attribute("strides", strides),
                               helper.make_attribute("pads", [0] * len(kernel) + end),
                               helper.make_attribute("count_include_pad", 0),
                               helper.make_attribute("ceil_mode", 0)])
        rewritten += 1
    return rewritten


def _name_batch_dim(model, dynamic_batch: bool) -> None:
    # The two exporters name the dynamic axis differently ("batch", "s0"...): make it "batch".
    if not dynamic_batch:
        return
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"


@contextlib.contextmanager
def _quiet_exporter():
    """The exporters print progress and deprecation notes to stdout; keep stdout for results."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        previous = logging.getLogger("torch.onnx").level
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger("torch.onnx").setLevel(previous)


def onnx_graph_signature(path: str | Path) -> str:
    """sha256 of the graph alone (nodes, initializers, inputs, outputs), without metadata.

    Two exports of the same weights by the same exporter have the same signature even when their
    metadata (run id, timestamps) differs.
    """
    import hashlib

    import onnx

    model = onnx.load(str(path))
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()
