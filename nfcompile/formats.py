"""The deliverable formats: one table, read by the pipeline (which stage makes and checks each), the
bundle (manifest entries, reference outputs), `verify` (parity), `bench --model` and `predict --model`.

A new format is one row here plus the two stage functions it names in `pipeline.py`. Imports nothing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeliverableFormat:
    name: str  # what --model says; the Validation's format and the manifest's `validation.<name>`
    manifest_key: str  # the manifest's `model.<key>` entry (the producing stage's result)
    file: str  # in the bundle
    produced_by: str  # pipeline stage
    validated_by: str  # pipeline stage
    onnx_runtime: bool  # ONNX Runtime runs it: timed by `bench --model`, run by `predict`, re-checked by `verify`
    summary: str


FORMATS: tuple[DeliverableFormat, ...] = (
    DeliverableFormat("fp32", "onnx", "model.onnx", "export", "validate_fp32", True,
                      "the chosen exit, one ONNX graph (simplified where it re-validates)"),
    DeliverableFormat("ort", "ort", "model.ort", "ort_format", "validate_ort", True,
                      "model.onnx in ONNX Runtime's own format for ONNX Runtime Mobile (export.ort_format)"),
    DeliverableFormat("int8", "int8", "model.int8.onnx", "quantize", "validate_int8", True,
                      "static INT8 QDQ, calibrated on the training split"),
    DeliverableFormat("engine", "engine", "model.engine", "engine", "validate_engine", False,
                      "TensorRT plan for this GPU and TensorRT version"),
)


def get_format(name: str) -> DeliverableFormat:
    for entry in FORMATS:
        if entry.name == name:
            return entry
    raise KeyError(f"unknown format {name!r}; formats: {', '.join(f.name for f in FORMATS)}")


def onnx_runtime_formats() -> list[str]:
    return [f.name for f in FORMATS if f.onnx_runtime]
