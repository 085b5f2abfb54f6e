"""export_exit: one checked ONNX file with metadata and a dynamic batch; the simplifier never loses a run."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from conftest import TINY_SIZE, make_tiny_data, make_tiny_multi_exit
from nfcompile.core.io import sha256_file
from nfcompile.recipe.schema import ExportSection
from nfcompile.runtime.compare import compare_runners
from nfcompile.runtime.ort_runner import OrtRunner
from nfcompile.runtime.torch_runner import TorchRunner
from nfcompile.stages.export import export_exit

SAMPLE = (3, TINY_SIZE, TINY_SIZE)
METADATA = {"recipe": "tiny", "exit": "exit_02", "preprocessing": json.dumps({"mean": [0.3] * 3}),
            "labels": json.dumps(["class0", "class1", "class2", "class3"])}


@pytest.fixture(scope="module")
def check_inputs() -> np.ndarray:
    data = make_tiny_data()
    return data.preprocessing.normalize(data.test.images).numpy()


def export(out_dir, check_inputs, **section):
    return export_exit(make_tiny_multi_exit().exit_net(2), ExportSection(**section), input_shape=SAMPLE,
                       out_dir=out_dir, metadata=METADATA, check_inputs=check_inputs)


@pytest.fixture(scope="module")
def dynamo_export(tmp_path_factory, check_inputs):
    out_dir = tmp_path_factory.mktemp("export")
    return out_dir, export(out_dir, check_inputs)


def test_one_checked_file_with_metadata(dynamo_export):
    out_dir, result = dynamo_export
    assert sorted(p.name for p in out_dir.iterdir()) == ["model.onnx"]  # single file, no temporaries
    model = onnx.load(str(out_dir / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    props = {p.key: p.value for p in model.metadata_props}
    assert {k: props[k] for k in METADATA} == METADATA
    assert props["exporter"] == "dynamo"
    assert result.exporter == "dynamo" and result.opset == 18
    assert any(o.domain in ("", "ai.onnx") and o.version == 18 for o in model.opset_import)
    assert result.input_shape == ("batch", *SAMPLE) and result.output_shape == ("batch", 4)
    assert result.sha256 == sha256_file(out_dir / "model.onnx")
    assert result.bytes == (out_dir / "model.onnx").stat().st_size


def test_simplified_graph_is_kept_and_says_so(dynamo_export):
    _, result = dynamo_export
    assert result.simplified
    assert result.simplify_note.startswith("kept: ") and " nodes" in result.simplify_note


@pytest.mark.parametrize("batch", [1, 7])
def test_dynamic_batch_matches_pytorch(dynamo_export, check_inputs, batch):
    out_dir, _ = dynamo_export
    reference = TorchRunner(make_tiny_multi_exit().exit_net(2))
    with OrtRunner(out_dir / "model.onnx") as candidate:
        output = candidate.infer({"input": check_inputs[:batch]})["logits"]
        c = compare_runners(reference, candidate, check_inputs[:batch], None, atol=1e-4, rtol=0.0,
                            batch_size=batch)
    assert output.shape == (batch, 4)
    assert c.max_abs_error <= 1e-4 and c.top1_agreement == 1.0


def test_torchscript_exporter_is_recorded(tmp_path, check_inputs):
    result = export(tmp_path, check_inputs, exporter="torchscript", opset=17)
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert result.exporter == props["exporter"] == "torchscript" and result.opset == 17


def test_simplifier_failure_is_a_note_not_a_lost_run(tmp_path, check_inputs, monkeypatch):
    import onnxsim

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported op in the simplifier")

    monkeypatch.setattr(onnxsim, "simplify", broken)
    result = export(tmp_path, check_inputs, exporter="torchscript")
    assert not result.simplified
    assert result.simplify_note == "not kept: onnxsim raised RuntimeError: unsupported op in the simplifier"
    onnx.checker.check_model(onnx.load(str(tmp_path / "model.onnx")), full_check=True)


def test_simplified_graph_that_changes_outputs_is_rejected(tmp_path, check_inputs, monkeypatch):
    import onnxsim

    real = onnxsim.simplify

    def wrong_weights(model, *args, **kwargs):
        simplified, ok = real(model, *args, **kwargs)
        weight = max(simplified.graph.initializer, key=lambda init: len(init.raw_data))
        values = onnx.numpy_helper.to_array(weight) * 1.5
        weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
        return simplified, ok

    monkeypatch.setattr(onnxsim, "simplify", wrong_weights)
    result = export(tmp_path, check_inputs, exporter="torchscript")
    assert not result.simplified
    assert result.simplify_note.startswith("not kept: the simplified graph disagrees at batch 1")
    # What was written is the exporter's graph, which matches PyTorch.
    c = compare_runners(TorchRunner(make_tiny_multi_exit().exit_net(2)), OrtRunner(tmp_path / "model.onnx"),
                        check_inputs, None, atol=1e-4, rtol=0.0, batch_size=16)
    assert c.max_abs_error <= 1e-4


def test_simplify_off_is_recorded(tmp_path, check_inputs):
    result = export(tmp_path, check_inputs, exporter="torchscript", simplify=False)
    assert not result.simplified and result.simplify_note == "not run (export.simplify: false)"


def test_check_inputs_must_fit_the_input_shape(tmp_path):
    with pytest.raises(ValueError, match="check_inputs"):
        export(tmp_path, np.zeros((4, 3, 8, 8), dtype=np.float32))


def test_static_batch_export_is_batch_one(tmp_path, check_inputs):
    result = export(tmp_path, check_inputs, exporter="torchscript", dynamic_batch=False)
    assert result.input_shape == (1, *SAMPLE) and result.output_shape == (1, 4)
    assert result.simplified  # re-validated at its own batch of 1
