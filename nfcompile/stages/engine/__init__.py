"""Engine stage: a TensorRT plan where TensorRT and CUDA are present, else skipped with the reason."""

from nfcompile.stages.engine.tensorrt_engine import build_engine

__all__ = ["build_engine"]
