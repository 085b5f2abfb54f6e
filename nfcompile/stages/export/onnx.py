"""Export the chosen exit as one checked ONNX file, simplified where that provably changes nothing.

The exporter and opset come from the recipe and are recorded. The simplifier (onnxsim) is an
optimization, never a requirement: when it raises, reports a failed check, breaks the dynamic batch
or changes the outputs on real held-out inputs, the unsimplified graph is kept and the reason is
recorded in `OnnxExport.simplify_note`.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from nfcompile.core.io import atomic_path, sha256_file
from nfcompile.core.log import get_logger
from nfcompile.core.results import OnnxExport
from nfcompile.recipe.schema import ExportSection
from nfcompile.runtime.compare import compare_runners
from nfcompile.runtime.onnx_io import OnnxExportError, export_onnx, model_opset, set_metadata
from nfcompile.runtime.ort_runner import OrtRunner

log = get_logger(__name__)

ONNX_FILE = "model.onnx"
# The simplified graph folds constants and fuses nodes: the same arithmetic up to float rounding.
SIMPLIFY_ATOL = 1e-5
SIMPLIFY_RTOL = 1e-4
CHECK_BATCH_SIZE = 64
BATCH_ONE_SAMPLES = 8  # also run a few samples one by one: batch 1 is what deployments often use


def export_exit(model: nn.Module, section: ExportSection, *, input_shape: tuple[int, ...], out_dir: str | Path,
                metadata: dict[str, str], check_inputs: np.ndarray) -> OnnxExport:
    """Write ``out_dir/model.onnx`` from ``model`` (one exit) and describe it.

    ``metadata`` goes into the file's `metadata_props` (recipe name, exit, preprocessing and labels
    as JSON...); ``check_inputs`` are preprocessed held-out inputs (N, *input_shape) on which a
    simplified graph must agree with the unsimplified one before it replaces it.
    """
    import onnx

    if check_inputs.ndim != len(input_shape) + 1 or tuple(check_inputs.shape[1:]) != tuple(input_shape) \
            or len(check_inputs) == 0:
        raise ValueError(f"check_inputs must be (N>0, {', '.join(map(str, input_shape))}), "
                         f"got {check_inputs.shape}")
    path = Path(out_dir) / ONNX_FILE
    export_onnx(model, path, input_shape=input_shape, exporter=section.exporter, opset=section.opset,
                dynamic_batch=section.dynamic_batch, metadata=metadata)
    exported = onnx.load(str(path))
    try:
        _check(exported, f"the {section.exporter} exporter's graph")
    except OnnxExportError:
        path.unlink(missing_ok=True)  # a graph that fails the checker is no deliverable
        raise
    simplified, note = (_simplified(exported, check_inputs, section.dynamic_batch) if section.simplify
                        else (None, "not run (export.simplify: false)"))
    if simplified is not None:
        with atomic_path(path) as tmp:
            onnx.save_model(simplified, str(tmp))
    final = simplified if simplified is not None else exported
    graph_input, graph_output = final.graph.input[0], final.graph.output[0]
    # The opset read back from the file that ships (onnxsim keeps it; this records it either way).
    return OnnxExport(path=ONNX_FILE, exporter=section.exporter, opset=model_opset(final),
                      input_name=graph_input.name, output_name=graph_output.name,
                      input_shape=_dims(graph_input), output_shape=_dims(graph_output),
                      bytes=path.stat().st_size, sha256=sha256_file(path),
                      simplified=simplified is not None, simplify_note=note)


def _check(model: Any, what: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise OnnxExportError(f"{what} fails onnx.checker: {str(exc).splitlines()[0]}",
                              hint="try the other export.exporter or another export.opset") from exc


def _simplified(exported: Any, check_inputs: np.ndarray, dynamic_batch: bool) -> tuple[Any | None, str]:
    """The onnxsim graph when it passes every check, else None; and what happened, in words."""
    import onnx
    import onnxsim

    before = len(exported.graph.node)
    try:
        # onnxsim prints progress on stdout, which is kept for results.
        with contextlib.redirect_stdout(io.StringIO()):
            candidate, check_ok = onnxsim.simplify(onnx.ModelProto.FromString(exported.SerializeToString()))
    except Exception as exc:  # onnxsim fails in many ways (C++ errors, unsupported ops): never a lost run
        return _rejected(f"onnxsim raised {type(exc).__name__}: {_first_line(exc)}")
    if not check_ok:
        return _rejected("onnxsim's own check failed")
    after = len(candidate.graph.node)
    _keep_own_metadata(candidate, exported)
    try:
        _check(candidate, "the simplified graph")
    except OnnxExportError as exc:
        return _rejected(exc.message)
    if dynamic_batch and _dims(candidate.graph.input[0])[0] != _dims(exported.graph.input[0])[0]:
        return _rejected("the simplified graph lost the dynamic batch dimension")
    disagreement = _disagreement(exported, candidate, check_inputs)
    if disagreement:
        return _rejected(disagreement)
    return candidate, f"kept: {before} -> {after} nodes"


def _rejected(reason: str) -> tuple[None, str]:
    log.warning("onnx simplifier not used, the exporter's graph is kept: %s", reason)
    return None, f"not kept: {reason}"


def _keep_own_metadata(candidate: Any, exported: Any) -> None:
    # onnxsim stamps a dozen `onnxsim.*` entries (lists of removed nodes...); keep ours and a short note.
    import onnxsim

    del candidate.metadata_props[:]
    set_metadata(candidate, {prop.key: prop.value for prop in exported.metadata_props})
    set_metadata(candidate, {"simplified_by": f"onnxsim {onnxsim.__version__.lstrip('v')}"})


def _disagreement(exported: Any, candidate: Any, check_inputs: np.ndarray) -> str:
    """Why the two graphs differ on the held-out inputs (at batch 1 and in full batches), or ''."""
    reference = OrtRunner(exported.SerializeToString())
    simplified = OrtRunner(candidate.SerializeToString())
    fixed_batch = _dims(exported.graph.input[0])[0]
    if isinstance(fixed_batch, int) and fixed_batch > 0:  # a static graph runs at its own batch only
        usable = len(check_inputs) - len(check_inputs) % fixed_batch
        runs = ((fixed_batch, check_inputs[:usable]),)
    else:
        runs = ((1, check_inputs[:BATCH_ONE_SAMPLES]), (CHECK_BATCH_SIZE, check_inputs))
    with reference, simplified:
        for batch_size, inputs in runs:
            try:
                comparison = compare_runners(reference, simplified, inputs, None, atol=SIMPLIFY_ATOL,
                                             rtol=SIMPLIFY_RTOL, batch_size=batch_size)
            except Exception as exc:  # the simplified graph does not even run
                return f"the simplified graph fails in onnxruntime at batch {batch_size}: {_first_line(exc)}"
            if comparison.within_tolerance < 1.0 or comparison.top1_agreement < 1.0:
                return (f"the simplified graph disagrees at batch {batch_size} "
                        f"(max |error| {comparison.max_abs_error:.3g}, top-1 agreement "
                        f"{comparison.top1_agreement:.1%}, atol {SIMPLIFY_ATOL:g}, rtol {SIMPLIFY_RTOL:g})")
    return ""


def _dims(value: Any) -> tuple[Any, ...]:
    """A graph input/output's shape: ints, and names ("batch") for dynamic dimensions."""
    return tuple(d.dim_param if d.dim_param else d.dim_value
                 for d in value.type.tensor_type.shape.dim)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
