"""Validate stage: every export against PyTorch on held-out inputs, then the recipe's gates."""

from nfcompile.stages.validate.gates import (engine_checks, fp32_checks, gate_table, int8_checks,
                                             require_passed)
from nfcompile.stages.validate.parity import validate_engine, validate_onnx

__all__ = ["engine_checks", "fp32_checks", "gate_table", "int8_checks", "require_passed", "validate_engine",
           "validate_onnx"]
