"""How far a candidate runner's outputs are from a reference's, on the same inputs.

This measures; it never judges (`stages/validate/gates.py` compares the numbers with the recipe).
Tensor level: max absolute and relative error, mean absolute error, cosine similarity and the
share of elements within Polygraphy's tolerance `|candidate - reference| <= atol + rtol * |reference|`.
Task level: top-1 agreement and, when labels are given, the accuracy of each side.
Used by the export, validate and quantize stages and by `nfcompile verify`.
"""

from __future__ import annotations

import contextlib

import numpy as np

from nfcompile.core.results import Comparison
from nfcompile.errors import NfcompileError
from nfcompile.runtime.base import Runner

# Relative error divides by |reference|; this floor keeps exact zeros from giving infinity.
REL_ERROR_FLOOR = float(np.finfo(np.float32).eps)


def compare_runners(reference: Runner, candidate: Runner, inputs: np.ndarray, labels: np.ndarray | None, *,
                    atol: float, rtol: float, batch_size: int) -> Comparison:
    """Run both runners on ``inputs`` (N, ...) in batches and compare their first outputs.

    Runners that are not active are activated here and deactivated afterwards; active ones are
    left as they are.
    """
    if len(inputs) == 0:
        raise NfcompileError("nothing to compare: no input samples",
                             hint="validate on a non-empty held-out split")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    with contextlib.ExitStack() as stack:
        for runner in (reference, candidate):
            if not runner.active:
                stack.enter_context(runner)
        expected = run_batched(reference, inputs, batch_size)
        actual = run_batched(candidate, inputs, batch_size)
    return comparison_from_outputs(expected, actual, labels, atol=atol, rtol=rtol,
                                   reference=reference.name, candidate=candidate.name)


def run_batched(runner: Runner, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    input_name, output_name = runner.input_names[0], runner.output_names[0]
    outputs = [runner.infer({input_name: np.ascontiguousarray(inputs[start:start + batch_size])})[output_name]
               for start in range(0, len(inputs), batch_size)]
    return np.concatenate(outputs, axis=0)


def comparison_from_outputs(expected: np.ndarray, actual: np.ndarray, labels: np.ndarray | None, *,
                            atol: float, rtol: float, reference: str, candidate: str) -> Comparison:
    """The figures of a `Comparison` from two (N, classes) output arrays."""
    if expected.shape != actual.shape:
        raise NfcompileError(f"{candidate} returned outputs of shape {actual.shape}, "
                             f"{reference} returned {expected.shape}: they are not the same model",
                             hint="check that both were made from the same exit")
    if labels is not None and len(labels) != len(expected):
        raise ValueError(f"{len(labels)} labels for {len(expected)} samples")
    ref = expected.astype(np.float64)
    out = actual.astype(np.float64)
    diff = np.abs(out - ref)
    scale = np.abs(ref)
    return Comparison(
        reference=reference,
        candidate=candidate,
        samples=int(len(expected)),
        # np.max, not nanmax: a NaN output must show in the figures, not hide behind finite ones.
        max_abs_error=float(np.max(diff)),
        max_rel_error=float(np.max(diff / np.maximum(scale, REL_ERROR_FLOOR))),
        mean_abs_error=float(diff.mean()),
        cosine=_cosine(ref.ravel(), out.ravel()),
        atol=float(atol),
        rtol=float(rtol),
        # NaN differences compare False, so a NaN output is never within tolerance.
        within_tolerance=float(np.mean(diff <= atol + rtol * scale)),
        top1_agreement=float(np.mean(ref.argmax(axis=1) == out.argmax(axis=1))),
        reference_accuracy=_accuracy(ref, labels),
        candidate_accuracy=_accuracy(out, labels),
    )


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:
        return 1.0 if not a.any() and not b.any() else 0.0
    return float(np.dot(a, b) / norms)


def _accuracy(outputs: np.ndarray, labels: np.ndarray | None) -> float | None:
    if labels is None:
        return None
    return float(np.mean(outputs.argmax(axis=1) == np.asarray(labels)))
