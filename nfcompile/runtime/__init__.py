"""Runners: PyTorch, ONNX Runtime and TensorRT behind one context-manager contract.

Backends import lazily, so `import nfcompile` works without TensorRT or CUDA.
"""

from nfcompile.runtime.base import Runner
from nfcompile.runtime.ort_runner import OrtRunner, ort_providers
from nfcompile.runtime.torch_runner import TorchRunner

__all__ = ["OrtRunner", "Runner", "TorchRunner", "ort_providers"]
