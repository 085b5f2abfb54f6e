"""Quantize stage: static INT8 QDQ through ONNX Runtime: int8 activations with zero points 0 for TensorRT,
or uint8 activations for ONNX Runtime on the CPU."""

from nfcompile.stages.quantize.qdq import activation_format, quantize_int8, zero_point_violations

__all__ = ["activation_format", "quantize_int8", "zero_point_violations"]
