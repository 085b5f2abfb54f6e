"""Judge measured comparisons against the recipe's limits; name the number that failed.

Each function turns one `Comparison` into `GateCheck`s (the number, its limit, the recipe field
holding the limit); `require_passed` raises `GateFailed` with a table of the failed checks.
A number that could not be measured (None) or is not finite (NaN) never passes.
"""

from __future__ import annotations

import math
import textwrap
from typing import Sequence

from nfcompile.core.results import Comparison, GateCheck
from nfcompile.errors import GateFailed, InputError
from nfcompile.recipe.schema import QuantizeSection, ValidateSection


def fp32_checks(comparison: Comparison, section: ValidateSection) -> list[GateCheck]:
    """The FP32 ONNX must match PyTorch: max |error| and top-1 agreement."""
    tolerance = (f"{comparison.within_tolerance:.2%} within atol {comparison.atol:g} + rtol {comparison.rtol:g}; "
                 f"max rel {comparison.max_rel_error:.3g}; cosine {comparison.cosine:.6f}")
    return [
        _check("fp32.max_abs_error", comparison.max_abs_error, "<=", section.max_abs_error,
               "validate.max_abs_error", tolerance),
        _check("fp32.top1_agreement", comparison.top1_agreement, ">=", section.min_top1_agreement,
               "validate.min_top1_agreement", _accuracies(comparison)),
    ]


def int8_checks(comparison: Comparison, section: QuantizeSection) -> list[GateCheck]:
    """The INT8 model may lose at most `quantize.max_accuracy_drop` of the reference's accuracy."""
    ref, cand = comparison.reference_accuracy, comparison.candidate_accuracy
    drop = ref - cand if ref is not None and cand is not None else None
    detail = (f"{_accuracies(comparison)}; top-1 agreement {comparison.top1_agreement:.2%}"
              if drop is not None else "accuracy not measured: no labels given")
    return [_check("int8.accuracy_drop", drop, "<=", section.max_accuracy_drop, "quantize.max_accuracy_drop",
                   detail)]


def engine_checks(comparison: Comparison, section: ValidateSection) -> list[GateCheck]:
    """A TensorRT engine must agree on top-1 with PyTorch; its tolerance figures are reported beside."""
    detail = (f"{comparison.within_tolerance:.2%} within atol {comparison.atol:g} + rtol {comparison.rtol:g} "
              f"(validate.engine_atol); max |error| {comparison.max_abs_error:.3g}; {_accuracies(comparison)}")
    return [_check("engine.top1_agreement", comparison.top1_agreement, ">=", section.engine_min_top1_agreement,
                   "validate.engine_min_top1_agreement", detail)]


def require_gate_limit(name: str, value: float) -> float:
    """A gate's limit must be a finite number above 0: NaN would pass every model (each comparison
    with it is false), inf or a negative number would make the gate meaningless."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InputError(f"{name} {value!r}: a gate limit must be a finite number above 0")
    return float(value)


def require_passed(checks: Sequence[GateCheck], what: str) -> None:
    """Raise GateFailed naming every failed check of ``what`` ("fp32 onnx", "int8 onnx"...)."""
    failed = [check for check in checks if not check.passed]
    if failed:
        raise GateFailed(f"{what}: {len(failed)} of {len(checks)} gate(s) failed\n"
                         f"{textwrap.indent(gate_table(failed), '  ')}\n",
                         hint="the export differs from the PyTorch model by more than the recipe allows; "
                         "relax the recipe field shown only if that difference is acceptable")


def gate_table(checks: Sequence[GateCheck]) -> str:
    """A compact fixed-width table: check, value, required, recipe field, detail."""
    rows = [("check", "value", "required", "recipe field", "")]
    rows += [(check.name, _number(check.value), f"{check.op} {_number(check.limit)}", check.field,
              "ok" if check.passed else "FAILED") for check in checks]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + f"  {row[4]}"
             for row in rows]
    lines += [f"{check.name}: {check.detail}" for check in checks if check.detail]
    return "\n".join(line.rstrip() for line in lines)


def _check(name: str, value: float | None, op: str, limit: float, field: str, detail: str) -> GateCheck:
    measured = value is not None and math.isfinite(value)
    passed = measured and (value <= limit if op == "<=" else value >= limit)
    return GateCheck(name=name, value=value, limit=limit, passed=bool(passed), detail=detail, op=op, field=field)


def _accuracies(comparison: Comparison) -> str:
    if comparison.reference_accuracy is None or comparison.candidate_accuracy is None:
        return f"{comparison.samples} samples, no labels"
    return (f"accuracy {comparison.reference} {comparison.reference_accuracy:.2%}, "
            f"{comparison.candidate} {comparison.candidate_accuracy:.2%} on {comparison.samples} samples")


def _number(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.4g}"
