"""Compare every export with the PyTorch reference on real held-out inputs.

The reference is the exit itself run by PyTorch (`TorchRunner`); candidates are the FP32 and INT8
ONNX files in ONNX Runtime and the TensorRT engine. Each comparison is measured the same way
(`runtime.compare.compare_runners`) and judged afterwards by `gates.py`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from nfcompile.core.results import Comparison
from nfcompile.recipe.schema import ValidateSection
from nfcompile.runtime.compare import compare_runners, comparison_from_outputs, run_batched
from nfcompile.runtime.ort_runner import OrtRunner
from nfcompile.runtime.torch_runner import TorchRunner

BATCH_SIZE = 64


def validate_onnx(model: nn.Module, onnx_path: str | Path, section: ValidateSection, *, inputs: np.ndarray,
                  labels: np.ndarray | None, device: str = "cpu", batch_size: int = BATCH_SIZE) -> Comparison:
    """An ONNX file (FP32 or INT8 QDQ) in ONNX Runtime against PyTorch, at `validate.atol`/`rtol`.

    A graph exported with a fixed batch runs at that batch (samples of an incomplete last batch are
    left out). ``device`` "cuda" uses ONNX Runtime's CUDA provider and raises StageSkipped where it
    is missing.
    """
    inputs, labels = _held_out(inputs, labels, section.samples)
    fixed = _fixed_batch(Path(onnx_path))
    if fixed is not None:
        batch_size = fixed
        inputs, labels = _whole_batches(inputs, labels, fixed, smallest=fixed)
    candidate = OrtRunner(Path(onnx_path), device=device)
    candidate.name = f"{candidate.name} {Path(onnx_path).name}"
    return compare_runners(TorchRunner(model), candidate, inputs, labels, atol=section.atol, rtol=section.rtol,
                           batch_size=batch_size)


def validate_engine(reference: nn.Module | np.ndarray, engine_path: str | Path, section: ValidateSection, *,
                    inputs: np.ndarray, labels: np.ndarray | None, batch_size: int = BATCH_SIZE) -> Comparison:
    """A TensorRT engine against PyTorch, at `validate.engine_atol` (FP16/INT8 engines round more).

    ``reference`` is the exit, run by PyTorch now (the build), or the outputs PyTorch gave for
    ``inputs`` at build time (`nfcompile engine` on the device, where the bundle holds no model).
    Batches stay inside the engine's optimization profile; samples of a last batch smaller than the
    profile's minimum are left out (`Comparison.samples` says how many were compared).
    Raises StageSkipped where TensorRT or CUDA is missing.
    """
    from nfcompile.runtime.tensorrt import TrtRunner

    recorded = isinstance(reference, np.ndarray)
    if recorded and len(reference) != len(inputs):
        raise ValueError(f"{len(reference)} reference outputs for {len(inputs)} inputs")
    inputs, labels = _held_out(inputs, labels, section.samples)
    with TrtRunner(engine_path) as candidate:
        smallest, largest = candidate.batch_range
        batch = max(smallest, min(batch_size, largest))
        inputs, labels = _whole_batches(inputs, labels, batch, smallest=smallest)
        if not recorded:
            return compare_runners(TorchRunner(reference), candidate, inputs, labels, atol=section.engine_atol,
                                   rtol=section.rtol, batch_size=batch)
        outputs = run_batched(candidate, inputs, batch)
    return comparison_from_outputs(reference[:len(inputs)], outputs, labels, atol=section.engine_atol,
                                   rtol=section.rtol, reference="PyTorch at build time", candidate=candidate.name)


def _held_out(inputs: np.ndarray, labels: np.ndarray | None,
              samples: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The first ``samples`` inputs and labels (all of them for None)."""
    if samples is None:
        return inputs, labels
    return inputs[:samples], (labels[:samples] if labels is not None else None)


def _whole_batches(inputs: np.ndarray, labels: np.ndarray | None, batch: int,
                   smallest: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Drop a last batch that would be smaller than ``smallest`` (the runner could not take it)."""
    remainder = len(inputs) % batch
    if 0 < remainder < smallest:
        return _held_out(inputs, labels, len(inputs) - remainder)
    return inputs, labels


def _fixed_batch(onnx_path: Path) -> int | None:
    """The graph's batch size when it was exported without a dynamic batch, else None."""
    import onnx

    dim = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None
