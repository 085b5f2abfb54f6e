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
    return nfcompile.build(recipe, ["train.epochs=2"], out_dir=folder / "artifacts")


def test_build_returns_the_bundle_and_every_typed_result(built):
    assert isinstance(built, BuildResult) and built.path.is_dir() and not built.path.name.endswith(".partial")
    assert isinstance(built.plan, Plan) and isinstance(built.train, TrainResult)
    assert isinstance(built.scores, ExitScores) and isinstance(built.selection, Selection)
    assert built.chosen_exit == built.selection.chosen and built.scores.get(built.chosen_exit).accuracy > 0.25
    assert set(built.validations) == {"fp32", "int8"}  # no TensorRT here: the engine stage skipped
    assert [r.name for r in built.stages][-1] == "bundle"
    assert built.train.blocks[0].epochs_run == 2  # the override applied


def test_bundle_commands_return_their_measurements(built, tmp_path):
    report = nfcompile.verify(built.path)
    assert isinstance(report, VerifyReport) and report.ok and report.parity
    timing = nfcompile.bench(built.path, model="int8", batch_sizes=[1], warmup=1, repeats=3)
    assert isinstance(timing, BenchResult) and timing.format == "int8" and timing.model == "model.int8.onnx"
    assert [lat.batch_size for lat in timing.latency] == [1] and timing.passed
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
    trained = nfcompile.train(recipe, ["train.epochs=1"], out_dir=tmp_path / "out")
    assert trained.path.name.endswith(".partial") and trained.train.blocks[0].epochs_run == 1
    selected = nfcompile.select(recipe, ["train.epochs=1", "select.policy=max_accuracy"], out_dir=tmp_path / "out")
    assert isinstance(selected, SelectResult) and selected.selection.policy == "max_accuracy"
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
