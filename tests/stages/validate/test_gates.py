"""Gates judge hand-made comparisons and name the number, its limit and the recipe field that failed."""

from __future__ import annotations

import dataclasses

import pytest

from nfcompile.core.results import Comparison, GateCheck
from nfcompile.errors import GateFailed
from nfcompile.recipe.schema import QuantizeSection, ValidateSection
from nfcompile.stages.validate import engine_checks, fp32_checks, gate_table, int8_checks, require_passed

GOOD = Comparison(reference="pytorch (cpu)", candidate="onnxruntime model.onnx", samples=100,
                  max_abs_error=2e-6, max_rel_error=1e-5, mean_abs_error=1e-7, cosine=1.0, atol=1e-4, rtol=1e-3,
                  within_tolerance=1.0, top1_agreement=1.0, reference_accuracy=0.95, candidate_accuracy=0.95)


def with_(**changes) -> Comparison:
    return dataclasses.replace(GOOD, **changes)


def failed_names(checks: list[GateCheck]) -> list[str]:
    return [c.name for c in checks if not c.passed]


def test_good_numbers_pass_every_gate():
    checks = [*fp32_checks(GOOD, ValidateSection()), *int8_checks(GOOD, QuantizeSection()),
              *engine_checks(GOOD, ValidateSection())]
    assert all(c.passed for c in checks)
    require_passed(checks, "all")


def test_fp32_max_abs_error_over_the_limit_is_named():
    checks = fp32_checks(with_(max_abs_error=3.2e-3), ValidateSection(max_abs_error=1e-4))
    assert failed_names(checks) == ["fp32.max_abs_error"]
    with pytest.raises(GateFailed) as failure:
        require_passed(checks, "fp32 onnx")
    message = str(failure.value)
    assert "fp32 onnx: 1 of 2 gate(s) failed" in message
    assert "fp32.max_abs_error" in message and "0.0032" in message and "<= 0.0001" in message
    assert "validate.max_abs_error" in message
    assert "fp32.top1_agreement" not in message  # only what failed is listed
    assert failure.value.exit_code == 3


def test_fp32_top1_agreement_below_the_limit_is_named():
    checks = fp32_checks(with_(top1_agreement=0.99), ValidateSection())
    assert failed_names(checks) == ["fp32.top1_agreement"]
    assert checks[1].field == "validate.min_top1_agreement" and checks[1].op == ">="


def test_limit_itself_passes():
    checks = fp32_checks(with_(max_abs_error=1e-4, top1_agreement=0.9),
                         ValidateSection(max_abs_error=1e-4, min_top1_agreement=0.9))
    assert all(c.passed for c in checks)


def test_nan_never_passes():
    checks = fp32_checks(with_(max_abs_error=float("nan")), ValidateSection())
    assert failed_names(checks) == ["fp32.max_abs_error"]


def test_int8_accuracy_drop_over_the_limit_is_named():
    checks = int8_checks(with_(reference_accuracy=0.95, candidate_accuracy=0.90),
                         QuantizeSection(max_accuracy_drop=0.01))
    (check,) = checks
    assert not check.passed and check.name == "int8.accuracy_drop"
    assert check.value == pytest.approx(0.05) and check.limit == 0.01 and check.field == "quantize.max_accuracy_drop"
    with pytest.raises(GateFailed, match=r"int8\.accuracy_drop +0\.05 +<= 0\.01 +quantize\.max_accuracy_drop"):
        require_passed(checks, "int8 onnx")


def test_int8_accuracy_gain_passes():
    assert int8_checks(with_(candidate_accuracy=0.96), QuantizeSection())[0].passed


def test_int8_without_labels_cannot_pass():
    (check,) = int8_checks(with_(reference_accuracy=None, candidate_accuracy=None), QuantizeSection())
    assert not check.passed and check.value is None and "no labels" in check.detail
    assert "not measured" in gate_table([check])


def test_engine_top1_agreement_and_reported_tolerance():
    comparison = with_(top1_agreement=0.9, atol=5e-2, within_tolerance=0.97)
    (check,) = engine_checks(comparison, ValidateSection(engine_min_top1_agreement=0.98))
    assert not check.passed and check.name == "engine.top1_agreement"
    assert "97.00% within atol 0.05" in check.detail


def test_checks_round_trip_through_json():
    checks = fp32_checks(with_(max_abs_error=1.0), ValidateSection())
    assert [GateCheck.from_dict(c.to_dict()) for c in checks] == checks
