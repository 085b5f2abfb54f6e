"""nfcompile: train a CNN under a memory budget with NeuroFlux and ship a validated edge model.

The Python API (`nfcompile.api`) is importable from here: ``nfcompile.build(...)``,
``nfcompile.verify(...)``, ... It loads on first use, so the CLI starts without it.
"""

from __future__ import annotations

import os
from typing import Any

# OpenMP threads that spin while they wait turned one other busy process on a 2-core CPU into a 30-40x
# slower build (perf: ~90% of the time in libgomp's spin-wait). libgomp reads this when it loads, with
# torch: set here, before anything of ours imports torch. A user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

API = ("available", "bench", "build", "check", "engine", "export", "plan", "predict", "select", "train", "verify")

__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    if name in API:
        from nfcompile import api

        return getattr(api, name)
    raise AttributeError(f"module 'nfcompile' has no attribute {name!r}")
