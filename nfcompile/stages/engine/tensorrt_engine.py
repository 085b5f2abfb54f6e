"""Build the TensorRT engine of the exported exit, where TensorRT and CUDA are present.

fp32 and fp16 engines build from the FP32 ONNX, int8 from the QDQ ONNX. Where TensorRT or CUDA is
missing the stage raises `StageSkipped` with the reason; no file is written. The engine's parity
with PyTorch is measured by the validate stage (`validate_engine`).
"""

from __future__ import annotations

from pathlib import Path

from nfcompile.core.io import sha256_file, write_bytes
from nfcompile.core.results import EngineResult
from nfcompile.errors import InputError, RecipeError, StageSkipped
from nfcompile.recipe.schema import TensorRTSection
from nfcompile.runtime.tensorrt import engine_from_onnx, tensorrt_unavailable_reason

ENGINE_FILE = "model.engine"
TIMING_CACHE_FILE = "timing.cache"


def build_engine(onnx_path: str | Path, int8_onnx_path: str | Path | None, section: TensorRTSection, *,
                 out_dir: str | Path) -> EngineResult:
    """Write ``out_dir/model.engine`` (and ``timing.cache``) for ``section.precision``."""
    if not section.enabled:
        raise StageSkipped("disabled in the recipe (tensorrt.enabled: false)")
    if section.precision == "int8" and int8_onnx_path is not None:
        _require_tensorrt_qdq(Path(int8_onnx_path))  # on any machine: the file is wrong, not the machine
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise StageSkipped(reason)
    if section.precision == "int8" and int8_onnx_path is None:
        raise RecipeError("precision int8 builds from the QDQ model, and there is none in this run",
                          field="tensorrt.precision", hint="set quantize.enabled: true, or precision fp16")
    source = Path(int8_onnx_path if section.precision == "int8" else onnx_path)
    out_dir = Path(out_dir)
    cache = out_dir / TIMING_CACHE_FILE
    if section.timing_cache is not None and not cache.exists():
        # Start from the recipe's cache without ever writing to it: it is read-only input.
        write_bytes(cache, Path(section.timing_cache).read_bytes())
    per_sample = _input_dims(source)
    build = engine_from_onnx(source, out_dir / ENGINE_FILE, precision=section.precision,
                             min_shape=(section.min_batch, *per_sample), opt_shape=(section.opt_batch, *per_sample),
                             max_shape=(section.max_batch, *per_sample), workspace_bytes=int(section.workspace),
                             timing_cache=cache)
    return EngineResult(path=ENGINE_FILE, source=source.name, precision=build.precision,
                        strongly_typed=build.strongly_typed, tensorrt_version=build.fingerprint.tensorrt_version,
                        gpu=build.fingerprint.gpu, compute_capability=build.fingerprint.compute_capability,
                        profile=build.profile, build_seconds=build.build_seconds, bytes=build.bytes,
                        sha256=sha256_file(build.path), timing_cache=TIMING_CACHE_FILE)


def _require_tensorrt_qdq(path: Path) -> None:
    """TensorRT's explicit quantization takes int8 Q/DQ with zero point 0; a QDQ model made for ONNX
    Runtime on the CPU (`quantize.activations: uint8`) is refused here by name, not by the parser."""
    import onnx

    from nfcompile.stages.quantize import zero_point_violations

    if not path.is_file():
        raise InputError(f"{path}: ONNX file not found")
    violations = zero_point_violations(onnx.load(str(path), load_external_data=False))
    if violations:
        raise InputError(f"{path.name}: not a TensorRT INT8 model ({len(violations)} Q/DQ zero point(s) TensorRT "
                         f"rejects, first: {violations[0]})",
                         hint="its activations are uint8, for ONNX Runtime on a CPU (quantize.activations: "
                              "uint8, or auto with bench.backend ort-cpu): build with quantize.activations: int8 "
                              "for an INT8 engine, or use precision fp16")


def _input_dims(onnx_path: Path) -> tuple[int, ...]:
    """The per-sample input shape (C, H, W) of the ONNX graph's single input."""
    import onnx

    if not onnx_path.is_file():
        raise InputError(f"{onnx_path}: ONNX file not found")
    graph_input = onnx.load(str(onnx_path), load_external_data=False).graph.input[0]
    dims = tuple(d.dim_value for d in graph_input.type.tensor_type.shape.dim[1:])
    if not dims or 0 in dims:
        raise InputError(f"{onnx_path.name}: input {graph_input.name} needs a fixed shape after the batch "
                         f"dimension to make an optimization profile, got {dims}")
    return dims
