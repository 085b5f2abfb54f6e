"""Quantize stage: static INT8 QDQ through ONNX Runtime, zero points 0 for TensorRT."""

from nfcompile.stages.quantize.qdq import quantize_int8, zero_point_violations

__all__ = ["quantize_int8", "zero_point_violations"]
