"""The two other methods, reached from recipes end to end: DRIVE pruning before export, and
gradient-filter fine-tuning of a trained model, each reported in the bundle."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import numpy_helper

from nfcompile.pipeline import run_pipeline
from nfcompile.runs import RunFolder
from nfcompile.recipe import load_recipe
from nfcompile.stages.bundle import verify_bundle

from conftest import TINY_DIGITS_RECIPE, write_recipe

pytestmark = pytest.mark.slow


def _finished(recipe, out, until=None):
    run = RunFolder.create(out, recipe.name)
    build = run_pipeline(recipe, run, resume=False, until=until)
    return build, (run.finish() if until is None else run)


def test_drive_pruning_is_exported_with_its_zeros_and_reported(tmp_path):
    path = write_recipe(tmp_path, TINY_DIGITS_RECIPE)
    recipe = load_recipe(path, ["prune.enabled=true", "prune.sparsity=0.6", "prune.rounds=2", "prune.dense_epochs=1",
                                "prune.baselines=[snip]", "train.epochs=3"])
    build, run = _finished(recipe, tmp_path / "out")
    prune = build.results["prune"]
    assert prune.method == "drive" and abs(prune.outcome.sparsity_reached - 0.6) < 0.01
    assert [b.method for b in prune.baselines] == ["snip"]
    assert prune.compressed_bytes < prune.dense_compressed_bytes
    # The exported graph carries the zeros: count them in the conv and linear weights.
    graph = onnx.load(str(run.path / "model.onnx")).graph
    weights = [numpy_helper.to_array(t) for t in graph.initializer if numpy_helper.to_array(t).ndim in (2, 4)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
    assert zeros > 0.5
    assert build.results["validate_fp32"].passed
    assert "## Pruning" in (run.path / "report.md").read_text()
    assert verify_bundle(run.path).ok


def test_gradient_filter_fine_tunes_a_trained_checkpoint(tmp_path):
    path = write_recipe(tmp_path, TINY_DIGITS_RECIPE)
    base = load_recipe(path, ["train.method=backprop", "train.epochs=12", "train.lr=0.05", "train.batch_size=32",
                              "budget.memory=64MiB"])
    _, trained = _finished(base, tmp_path / "base", until="train")
    checkpoint = trained.path / "checkpoint" / "checkpoint.pt"
    recipe = load_recipe(path, ["train.method=gradient_filter", f"model.pretrained={checkpoint}", "train.epochs=2",
                                "train.lr=0.01", "train.gradient_filter.layers=2", "train.gradient_filter.patch=2"])
    build, run = _finished(recipe, tmp_path / "finetuned")
    assert build.records["plan"].status == "skipped"
    train = build.results["train"]
    assert train.method == "gradient_filter" and train.exit_units == (8,)
    memory = train.details["layer_memory"]
    assert len(memory) == 2
    for layer in memory:  # the filtered op saves about (R * stride)^2 less
        assert layer["reduction"] == pytest.approx(layer["expected_reduction"], rel=0.35)
    report = (run.path / "report.md").read_text()
    assert "## Gradient filtering" in report
    manifest = json.loads((run.path / "manifest.json").read_text())
    assert manifest["validation"]["fp32"]["comparison"]["top1_agreement"] == 1.0
    # Fine-tuning a trained model keeps it trained (the base reaches about 96% here).
    assert train.exit_val_accuracy[0] > 0.85
