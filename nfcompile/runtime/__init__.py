"""Runners: PyTorch, ONNX Runtime and TensorRT behind one context-manager contract.

Backends import lazily (and so does this package: `nfcompile --help` needs the backend names, not
torch), so `import nfcompile` works without TensorRT or CUDA.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"OrtRunner": "nfcompile.runtime.ort_runner", "ort_providers": "nfcompile.runtime.ort_runner",
         "TorchRunner": "nfcompile.runtime.torch_runner", "Runner": "nfcompile.runtime.base"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'nfcompile.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
