"""Fixtures of the reliability tests. The expensive one, two real builds started together into one
--out folder, runs once per session: its bundles are the concurrency test's subject and, for every
other test, the uninterrupted reference a killed and resumed build must reproduce."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from reliability.helpers import reliability_recipe, start_cli


BUILT = {"concurrent_builds", "reference_bundle", "int8_models"}  # fixtures that run real builds


def pytest_collection_modifyitems(items):
    """Tests that need a real build are `slow`, like tests/test_build.py: `-m "not slow"` skips them."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents and BUILT & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("reliability")
    (folder / "recipe.yaml").write_text(reliability_recipe(), encoding="utf-8")
    return folder


def tree_digest(folder: Path, skip: Path | None = None) -> dict[str, str]:
    """sha256 of every file under ``folder`` (except under ``skip``), by relative path."""
    found = {}
    for parent, dirs, names in os.walk(folder):
        if skip is not None and Path(parent).resolve() == skip.resolve():
            dirs[:] = []
            continue
        for name in names:
            path = Path(parent) / name
            found[path.relative_to(folder).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@dataclass(frozen=True)
class ConcurrentBuilds:
    out: Path
    bundles: tuple[Path, ...]
    summaries: tuple[dict, ...]
    seconds: float
    outside_before: dict[str, str]  # the workspace outside --out, before and after the builds
    outside_after: dict[str, str]


@pytest.fixture(scope="session")
def concurrent_builds(workspace) -> ConcurrentBuilds:
    out = workspace / "artifacts"
    before = tree_digest(workspace, skip=out)
    started = time.perf_counter()
    processes = [start_cli("-q", "build", "recipe.yaml", "--out", str(out), "--json", cwd=workspace)
                 for _ in range(2)]
    results = [process.communicate(timeout=600) for process in processes]
    seconds = time.perf_counter() - started
    for process, (_, err) in zip(processes, results):
        assert process.returncode == 0, err
    summaries = tuple(json.loads(stdout) for stdout, _ in results)
    bundles = tuple(Path(s["artifact"]) if Path(s["artifact"]).is_absolute() else workspace / s["artifact"]
                    for s in summaries)
    return ConcurrentBuilds(out, bundles, summaries, seconds, before, tree_digest(workspace, skip=out))


@pytest.fixture(scope="session")
def reference_bundle(concurrent_builds) -> Path:
    """A complete bundle of the reliability recipe, built without interruption."""
    return concurrent_builds.bundles[0]


@pytest.fixture(scope="session")
def int8_models(reference_bundle, tmp_path_factory) -> dict[str, Path]:
    """The reference bundle's QDQ model in both activation formats: its own model.int8.onnx (uint8, as
    `quantize.activations: auto` gives for ONNX Runtime on the CPU) and its model.onnx quantized here
    with int8 activations, the TensorRT form, on the calibration samples the build used."""
    import onnx

    from nfcompile.core.io import read_json
    from nfcompile.data import calibration_array, load_data
    from nfcompile.recipe.load import validate_recipe
    from nfcompile.stages.quantize import quantize_int8

    own = reference_bundle / "model.int8.onnx"
    metadata = {p.key: p.value for p in onnx.load(str(own), load_external_data=False).metadata_props}
    assert "uint8 activations" in metadata["quantization"], metadata["quantization"]
    recipe_file = reference_bundle / "state" / "recipe.json"
    recipe = validate_recipe(read_json(recipe_file)["recipe"], source=str(recipe_file))
    data = load_data(recipe.data, recipe.seed)
    out = tmp_path_factory.mktemp("int8-activations")
    result = quantize_int8(reference_bundle / "model.onnx", recipe.quantize, out_dir=out, activations="int8",
                           calibration_inputs=calibration_array(data, recipe.quantize.calibration_samples,
                                                                recipe.seed))
    return {"uint8": own, "int8": out / result.path}
