"""Export stage: the chosen exit as one checked (and, where it provably changes nothing, simplified) ONNX."""

from nfcompile.stages.export.onnx import export_exit

__all__ = ["export_exit"]
