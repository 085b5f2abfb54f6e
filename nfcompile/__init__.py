"""nfcompile: train a CNN under a memory budget with NeuroFlux and ship a validated edge model.

The Python API (`nfcompile.api`) is importable from here: ``nfcompile.build(...)``,
``nfcompile.verify(...)``, ... It loads on first use, so the CLI starts without it.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

API = ("available", "bench", "build", "check", "engine", "export", "plan", "predict", "select", "train", "verify")

__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    if name in API:
        from nfcompile import api

        return getattr(api, name)
    raise AttributeError(f"module 'nfcompile' has no attribute {name!r}")
