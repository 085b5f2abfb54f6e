"""model.ort: the deliverable in ONNX Runtime's own format, for ONNX Runtime Mobile (`export.ort_format`).

Both steps are ONNX Runtime's own tools, called through their Python API: the converter
`onnxruntime.tools.convert_onnx_models_to_ort` (fixed optimizations, as its documentation recommends
for mobile) and the mobile usability checker behind
`python -m onnxruntime.tools.check_onnx_model_mobile_usability`, whose report is kept beside the
model. The ORT model's agreement with PyTorch is measured by the validate stage.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path

from nfcompile.core.io import atomic_path, sha256_file, write_text
from nfcompile.core.results import OrtExport
from nfcompile.errors import NfcompileError

ORT_FILE = "model.ort"
MOBILE_CHECK_FILE = "model.mobile_usability.txt"


class OrtConversionError(NfcompileError):
    """onnxruntime's converter could not write an ORT format model."""


def ort_from_onnx(onnx_path: str | Path, out_dir: str | Path) -> OrtExport:
    """Write ``out_dir/model.ort`` from ``onnx_path`` and ``out_dir/model.mobile_usability.txt``."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    path = out_dir / ORT_FILE
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".ort-") as work:
        work = Path(work)
        source = work / onnx_path.name  # the converter writes next to its input's name: convert a copy
        shutil.copyfile(onnx_path, source)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the converter prints progress on stdout
                convert_onnx_models_to_ort(source, output_dir=work / "out",
                                           optimization_styles=[OptimizationStyle.Fixed])
        except Exception as exc:  # onnxruntime raises plain exceptions for unsupported graphs
            raise OrtConversionError(f"onnxruntime could not convert {onnx_path.name} to the ORT format: "
                                     f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                                     hint="set export.ort_format: false") from exc
        written = sorted((work / "out").glob("*.ort"))
        if not written:
            raise OrtConversionError(f"onnxruntime's converter wrote no .ort file for {onnx_path.name}")
        with atomic_path(path) as tmp:
            shutil.copyfile(written[0], tmp)
    may_help, report = mobile_usability(onnx_path)
    write_text(out_dir / MOBILE_CHECK_FILE, report)
    return OrtExport(path=ORT_FILE, source=onnx_path.name, optimization="fixed, level all (the converter's default)",
                     bytes=path.stat().st_size, sha256=sha256_file(path), mobile_check=MOBILE_CHECK_FILE,
                     nnapi_or_coreml_may_help=bool(may_help))


def mobile_usability(onnx_path: Path) -> tuple[bool, str]:
    """ONNX Runtime's mobile usability check of ``onnx_path``: its verdict (NNAPI or CoreML may help)
    and its report, as the command-line tool logs it."""
    from onnxruntime.tools.mobile_helpers import usability_checker

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("nfcompile.ort_mobile_usability")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            may_help = usability_checker.analyze_model(Path(onnx_path), skip_optimize=False, logger=logger)
    finally:
        logger.removeHandler(handler)
    verdict = ("NNAPI (Android) or CoreML (iOS) may help with this model: compare them with the CPU EP on the device"
               if may_help else "For optimal performance use the CPU execution provider")
    return bool(may_help), f"ONNX Runtime mobile usability check of {Path(onnx_path).name}\n\n{stream.getvalue()}\n{verdict}\n"
