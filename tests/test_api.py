"""The Python API the CLI stands on: typed results from a recipe path or object, errors as exceptions,
and the README's example, run as written (on a smaller schedule)."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from PIL import Image

import nfcompile
from nfcompile.api import BenchResult, BuildResult, Predictions, SelectResult
from nfcompile.core.results import ExitScores, Plan, Selection, TrainResult
from nfcompile.errors import GateFailed, InputError, RecipeError
from nfcompile.recipe import load_recipe
from nfcompile.stages.bundle.verify import VerifyReport

from conftest import REPO, TINY_DIGITS_RECIPE, write_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> BuildResult:
    folder = tmp_path_factory.mktemp("api")
    recipe = write_recipe(folder, TINY_DIGITS_RECIPE)
    return nfcompile.build(recipe, ["train.epochs=2", "export.ort_format=true"], out_dir=folder / "artifacts")


def test_build_returns_the_bundle_and_every_typed_result(built):
    assert isinstance(built, BuildResult) and built.path.is_dir() and not built.path.name.endswith(".partial")
    assert isinstance(built.plan, Plan) and isinstance(built.train, TrainResult)
    assert isinstance(built.scores, ExitScores) and isinstance(built.selection, Selection)
    assert built.chosen_exit == built.selection.chosen and built.scores.get(built.chosen_exit).accuracy > 0.25
    assert set(built.validations) == {"fp32", "ort", "int8"}  # no TensorRT here: the engine stage skipped
    assert [r.name for r in built.stages][-1] == "bundle"
    assert built.train.blocks[0].epochs_run == 2  # the override applied


def test_bundle_commands_return_their_measurements(built, tmp_path):
    report = nfcompile.verify(built.path)
    assert isinstance(report, VerifyReport) and report.ok and report.parity
    timing = nfcompile.bench(built.path, model="int8", batch_sizes=[1], warmup=1, repeats=3)
    assert isinstance(timing, BenchResult) and timing.format == "int8" and timing.model == "model.int8.onnx"
    assert [lat.batch_size for lat in timing.latency] == [1] and timing.passed
    assert timing.load is not None and len(timing.load.load_average) == 3
    image = tmp_path / "digit.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(image)
    predictions = nfcompile.predict(built.path, [image], top_k=2)
    assert isinstance(predictions, Predictions) and len(predictions.predictions[0].top) == 2


def test_a_failed_gate_raises_with_what_was_measured(built):
    with pytest.raises(GateFailed) as failed:
        nfcompile.bench(built.path, batch_sizes=[1], warmup=0, repeats=3, max_latency_ms=1e-9)
    assert isinstance(failed.value.result, BenchResult) and not failed.value.result.passed


def test_a_recipe_object_with_overrides_trains_and_selects_again(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, TINY_DIGITS_RECIPE))
    # Every epoch evaluates 41 of the 120 validation images (a count no other split size shares a fraction
    # with: k/120 = j/41 only at 0 and 1); selection scores all 120.
    overrides = ["train.epochs=1", "data.monitor_samples=41"]

    def evaluated_on_the_monitored_images(result: TrainResult) -> bool:
        accuracies = [a for block in result.blocks for epoch in block.history for a in epoch.val_accuracy]
        return bool(accuracies) and all(0 < a < 1 and round(a * 41, 6).is_integer() for a in accuracies)

    trained = nfcompile.train(recipe, overrides, out_dir=tmp_path / "out")
    assert trained.path.name.endswith(".partial") and trained.train.blocks[0].epochs_run == 1
    assert trained.plan.val_samples == 41 and evaluated_on_the_monitored_images(trained.train)
    backprop = nfcompile.train(recipe, [*overrides, "train.method=backprop", "budget.memory=16MiB"],
                               out_dir=tmp_path / "backprop")
    assert evaluated_on_the_monitored_images(backprop.train)
    selected = nfcompile.select(recipe, [*overrides, "select.policy=max_accuracy"], out_dir=tmp_path / "out")
    assert isinstance(selected, SelectResult) and selected.selection.policy == "max_accuracy"
    assert selected.scores.val_samples == 120
    assert nfcompile.check(recipe, ["seed=3"]).seed == 3


def test_bad_input_is_an_exception_naming_the_field(tmp_path):
    recipe = write_recipe(tmp_path, TINY_DIGITS_RECIPE)
    with pytest.raises(RecipeError, match="bench.backend"):
        nfcompile.check(recipe, ["bench.backend=ort-npu"])
    with pytest.raises(InputError, match="no such bundle"):
        nfcompile.verify(tmp_path / "nowhere")
    assert set(nfcompile.available()) == {"archs", "datasets", "backends", "formats"}


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'nfcompile.build("recipes/quickstart.yaml"' in code
    # The quickstart as written, on a schedule a test can afford: fewer images, one epoch, quick timing.
    small = ('["train.epochs=1", "data.max_train_samples=300", "data.max_eval_samples=100", '
             '"bench.repeats=3", "bench.warmup=1", "quantize.calibration_samples=32"]')
    code = re.sub(r'\["train\.epochs=\d+"\]', small, code)
    code = code.replace('"recipes/quickstart.yaml"', repr(str(REPO / "recipes" / "quickstart.yaml")))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert list((tmp_path / "artifacts" / "quickstart").iterdir())
    assert os.path.isfile(next((tmp_path / "artifacts" / "quickstart").iterdir()) / "manifest.json")


def _heldout(bundle):
    """The bundle's held-out test split, preprocessed as its manifest says, and the labels."""
    import json

    import torch

    from nfcompile.data import Preprocessing

    manifest = json.loads((bundle / "manifest.json").read_text())
    pre = manifest["preprocessing"]
    preprocessing = Preprocessing(image_size=pre["image_size"], mean=tuple(pre["mean"]), std=tuple(pre["std"]),
                                  color=pre.get("color", "rgb"))
    files = manifest["heldout"]["files"]
    images = torch.from_numpy(np.load(bundle / files["heldout_images"]))
    return preprocessing.normalize(images).numpy(), np.load(bundle / files["heldout_labels"]), manifest


def test_the_ort_format_model_gives_model_onnx_top1_on_the_held_out_set(built):
    from nfcompile.runtime import OrtRunner

    x, labels, manifest = _heldout(built.path)
    assert len(labels) == manifest["heldout"]["samples"] == built.scores.test_samples > 0
    top1 = {}
    for name in ("model.onnx", "model.ort"):
        with OrtRunner(built.path / name) as runner:
            top1[name] = runner.infer({runner.input_names[0]: x})[runner.output_names[0]].argmax(1)
    assert np.array_equal(top1["model.onnx"], top1["model.ort"])
    assert manifest["model"]["ort"]["path"] == "model.ort"
    check = (built.path / manifest["model"]["ort"]["mobile_check"]).read_text()
    assert "usability with ORT Mobile" in check and "NNAPI" in check


def test_the_report_times_fp32_and_int8_and_shows_the_test_split_per_class(built):
    import json

    report = (built.path / "report.md").read_text()
    assert "## Deliverables: size, latency, accuracy" in report
    for row in ("| fp32 | `model.onnx` |", "| int8 | `model.int8.onnx` |", "| ort | `model.ort` |"):
        assert row in report
    manifest = json.loads((built.path / "manifest.json").read_text())
    timed = {f["format"]: f for f in manifest["latency"]["formats"]}
    assert [lat["batch_size"] for lat in timed["int8"]["latency"]] == [1, 8]
    faster = all(v > 1.0 for v in manifest["latency"]["int8_speedup"].values())
    assert ("INT8 is not faster than FP32 on this device" in report) != faster
    assert manifest["model"]["int8"]["activations"] == "uint8"  # an ort-cpu recipe, auto
    assert "activations are uint8 with calibrated zero points" in report
    per_class = json.loads((built.path / "per_class.json").read_text())
    assert sum(c["samples"] for c in per_class["classes"]) == per_class["samples"] == manifest["heldout"]["samples"]
    assert np.array(per_class["confusion_matrix"]).sum() == per_class["samples"]
    assert (built.path / "confusion.png").stat().st_size > 0 and "![confusion matrix](confusion.png)" in report
    assert "this network's last exit" in report and "vs the full model" not in report
    bundle_row = next(line for line in report.splitlines() if line.startswith("| bundle |"))
    assert float(bundle_row.split("|")[3]) > 0.0


def test_engine_refuses_a_tampered_bundle_before_building(built, tmp_path):
    import shutil

    copy = tmp_path / built.path.name
    shutil.copytree(built.path, copy)
    with open(copy / "model.onnx", "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(GateFailed, match="verification failed"):
        nfcompile.engine(copy)
