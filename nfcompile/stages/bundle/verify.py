"""`nfcompile verify`: is this bundle what the build wrote, and does it still compute the same thing?

Integrity: every file's sha256 against the manifest; a changed, missing or extra file fails.
Parity: the ONNX models re-run on the stored held-out inputs and are compared with the outputs
recorded at build time (FP32 also with PyTorch's), with the recipe's tolerances.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nfcompile.errors import InputError
from nfcompile.core.results import Comparison, Result
from nfcompile.runtime import OrtRunner
from nfcompile.runtime.compare import comparison_from_outputs
from nfcompile.stages.bundle.manifest import (DIGEST_FIELD, MANIFEST_FILE, checked_model_file, hash_files, load_array,
                                              load_manifest, manifest_digest)

REFERENCE_DIR = "validation"


@dataclass(frozen=True)
class ParityCheck(Result):
    model: str
    against: str
    comparison: Comparison
    passed: bool
    limit: str


@dataclass(frozen=True)
class VerifyReport(Result):
    path: str
    files_checked: int
    changed: tuple[str, ...]
    missing: tuple[str, ...]
    extra: tuple[str, ...]
    parity: tuple[ParityCheck, ...]

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing or self.extra) and all(p.passed for p in self.parity)


def verify_bundle(bundle: Path, *, parity: bool = True) -> VerifyReport:
    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    recorded = manifest["files"]
    actual = hash_files(bundle)
    changed = tuple(sorted(n for n in recorded if n in actual and actual[n]["sha256"] != recorded[n]["sha256"]))
    if manifest.get(DIGEST_FIELD) != manifest_digest(manifest):
        changed = (MANIFEST_FILE, *changed)
    missing = tuple(sorted(set(recorded) - set(actual)))
    extra = tuple(sorted(set(actual) - set(recorded)))
    checks: tuple[ParityCheck, ...] = ()
    # Parity only on files that passed the hash check: a tampered file has already failed.
    if parity and manifest.get("reference") and not (changed or missing):
        checks = tuple(_parity(bundle, manifest))
    return VerifyReport(str(bundle), len(recorded), changed, missing, extra, checks)


def _parity(bundle: Path, manifest: dict) -> list[ParityCheck]:
    reference = manifest["reference"]
    validate = manifest["recipe"]["validate"]
    # Paths come from the manifest: never let one point outside the bundle.
    arrays = {key: load_array(bundle, path) for key, path in reference["files"].items()}
    if "inputs" not in arrays:
        raise InputError(f"{bundle}: the manifest's reference lists no inputs array")
    x = arrays["inputs"]
    checks = []
    for key, model in reference["models"].items():
        if key not in arrays:
            raise InputError(f"{bundle}: the manifest's reference has no build-time outputs for {model}")
        with OrtRunner(checked_model_file(bundle, model)) as runner:
            now = runner.infer({runner.input_names[0]: x})[runner.output_names[0]]
        # Against the outputs this very file gave at build time: ONNX Runtime on another CPU may
        # round differently, but never by more than the FP32 gate allows.
        same = comparison_from_outputs(arrays[key], now, None, atol=validate["atol"], rtol=validate["rtol"],
                                       reference=f"{model} at build time", candidate=f"{model} now")
        tolerance = validate["max_abs_error"] if key == "fp32" else validate["engine_atol"]
        checks.append(ParityCheck(model, "build-time outputs", same,
                                  same.max_abs_error <= tolerance and same.top1_agreement == 1.0,
                                  f"max abs error <= {tolerance:g}, top-1 agreement 100%"))
        if key == "fp32":
            torch_ref = comparison_from_outputs(arrays["pytorch"], now, None, atol=validate["atol"],
                                                rtol=validate["rtol"], reference="PyTorch at build time",
                                                candidate=f"{model} now")
            checks.append(ParityCheck(model, "PyTorch", torch_ref,
                                      torch_ref.max_abs_error <= validate["max_abs_error"]
                                      and torch_ref.top1_agreement >= validate["min_top1_agreement"],
                                      f"max abs error <= {validate['max_abs_error']:g}, top-1 agreement >= "
                                      f"{validate['min_top1_agreement']:.0%}"))
    return checks
