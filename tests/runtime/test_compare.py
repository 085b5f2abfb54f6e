"""compare_runners / comparison_from_outputs: the figures, on hand-made outputs and real runners."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import TINY_SIZE, make_tiny_data, make_tiny_multi_exit
from nfcompile.errors import NfcompileError
from nfcompile.runtime.compare import comparison_from_outputs, compare_runners
from nfcompile.runtime.onnx_io import export_onnx
from nfcompile.runtime.ort_runner import OrtRunner
from nfcompile.runtime.torch_runner import TorchRunner

REFERENCE = np.array([[1.0, 2.0, -1.0],
                      [4.0, -3.0, 0.5],
                      [0.0, 1.0, 2.0]])
# Row 0 off by 0.5 in its largest logit (argmax still 1); row 1's argmax moves from 0 to 2.
CANDIDATE = np.array([[1.0, 2.5, -1.0],
                      [4.0, -3.0, 4.5],
                      [0.0, 1.0, 2.0]])
LABELS = np.array([1, 0, 0])


def figures(atol: float = 0.1, rtol: float = 0.0, labels=LABELS):
    return comparison_from_outputs(REFERENCE, CANDIDATE, labels, atol=atol, rtol=rtol, reference="ref",
                                   candidate="cand")


def test_tensor_figures_match_hand_computation():
    c = figures()
    assert c.samples == 3
    assert c.max_abs_error == pytest.approx(4.0)
    assert c.max_rel_error == pytest.approx(4.0 / 0.5)
    assert c.mean_abs_error == pytest.approx(4.5 / 9)
    expected_cosine = float(REFERENCE.ravel() @ CANDIDATE.ravel()
                            / (np.linalg.norm(REFERENCE) * np.linalg.norm(CANDIDATE)))
    assert c.cosine == pytest.approx(expected_cosine)
    assert c.within_tolerance == pytest.approx(7 / 9)


def test_relative_tolerance_widens_the_band_polygraphy_style():
    # |a-b| <= atol + rtol*|ref|: 0.5 <= 0.1 + 0.25*2 passes, 4.0 <= 0.1 + 0.25*0.5 does not.
    assert figures(atol=0.1, rtol=0.25).within_tolerance == pytest.approx(8 / 9)


def test_task_figures_top1_and_accuracy():
    c = figures()
    assert c.top1_agreement == pytest.approx(2 / 3)
    assert c.reference_accuracy == pytest.approx(2 / 3)  # rows 0 and 1 right, row 2 (argmax 2) wrong
    assert c.candidate_accuracy == pytest.approx(1 / 3)
    unlabeled = figures(labels=None)
    assert unlabeled.reference_accuracy is None and unlabeled.candidate_accuracy is None


def test_nan_output_is_visible_and_never_within_tolerance():
    broken = CANDIDATE.copy()
    broken[2, 2] = np.nan
    c = comparison_from_outputs(REFERENCE, broken, None, atol=10.0, rtol=0.0, reference="r", candidate="c")
    assert math.isnan(c.max_abs_error)
    assert c.within_tolerance == pytest.approx(8 / 9)


def test_identical_outputs_are_exact():
    c = comparison_from_outputs(REFERENCE, REFERENCE.copy(), LABELS, atol=0.0, rtol=0.0, reference="r",
                                candidate="c")
    assert (c.max_abs_error, c.max_rel_error, c.within_tolerance, c.top1_agreement) == (0.0, 0.0, 1.0, 1.0)
    assert c.cosine == pytest.approx(1.0)


def test_different_output_shapes_are_an_error():
    with pytest.raises(NfcompileError, match="not the same model"):
        comparison_from_outputs(REFERENCE, REFERENCE[:, :2], None, atol=0, rtol=0, reference="r", candidate="c")


def test_compare_runners_batches_and_leaves_runner_state(tmp_path):
    module = make_tiny_multi_exit().exit_net(1)
    path = export_onnx(module, tmp_path / "m.onnx", input_shape=(3, TINY_SIZE, TINY_SIZE),
                       exporter="torchscript", opset=18).path
    data = make_tiny_data()
    inputs = data.preprocessing.normalize(data.test.images[:10]).numpy()
    labels = data.test.labels[:10].numpy()
    reference, candidate = TorchRunner(module), OrtRunner(path)
    with candidate:  # an active runner stays active; an inactive one is activated and released
        c = compare_runners(reference, candidate, inputs, labels, atol=1e-4, rtol=1e-3, batch_size=4)
        assert candidate.active
    assert not reference.active
    assert c.samples == 10 and c.top1_agreement == 1.0
    assert c.max_abs_error < 1e-4
    assert c.reference == "pytorch (cpu)" and "onnxruntime" in c.candidate
    assert c.reference_accuracy == c.candidate_accuracy


def test_compare_runners_refuses_empty_inputs():
    module = make_tiny_multi_exit().exit_net(0)
    empty = np.zeros((0, 3, TINY_SIZE, TINY_SIZE), dtype=np.float32)
    with pytest.raises(NfcompileError, match="no input samples"):
        compare_runners(TorchRunner(module), TorchRunner(module), empty, None, atol=0, rtol=0, batch_size=4)
