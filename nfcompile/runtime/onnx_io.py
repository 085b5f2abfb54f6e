"""A torch module to one ONNX file: explicit exporter, opset, dynamic batch, metadata, atomic write.

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
