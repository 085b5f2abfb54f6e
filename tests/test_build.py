"""`nfcompile build` end to end, through the real CLI in subprocesses: the bundle, its integrity,
resume after a kill, determinism, exit codes, the CIFAR recipe, and stage invalidation."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nfcompile.errors import GateFailed
from nfcompile import pipeline
from nfcompile.pipeline import run_pipeline
from nfcompile.runs import RunFolder
from nfcompile.recipe import load_recipe
from nfcompile.runtime.onnx_io import onnx_graph_signature
from nfcompile.stages.bundle import verify_bundle

from conftest import REPO, TINY_DIGITS_RECIPE, run_cli, write_cifar, write_recipe

pytestmark = pytest.mark.slow


def _build(recipe: Path, out: Path, *extra: str) -> tuple[Path, dict]:
    result = run_cli("-q", "build", str(recipe), "--out", str(out), "--json", *extra)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    return Path(summary["artifact"]), summary


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("build")
    write_recipe(folder, TINY_DIGITS_RECIPE, "tiny.yaml")
    return folder


@pytest.fixture(scope="module")
def bundle(workspace) -> tuple[Path, dict]:
    return _build(workspace / "tiny.yaml", workspace / "artifacts")


def test_the_bundle_is_complete_and_validated(bundle):
    path, summary = bundle
    assert path.name == path.name.removesuffix(".partial") and path.is_dir()
    for name in ("model.onnx", "model.int8.onnx", "exits.json", "pareto.png", "plan.png", "training.png",
                 "report.md", "manifest.json", "checkpoint/checkpoint.pt", "validation/inputs.npy"):
        assert (path / name).is_file(), name
    manifest = json.loads((path / "manifest.json").read_text())
    stages = {s["name"]: s for s in manifest["stages"]}
    assert stages["engine"]["status"] == "skipped"
    assert "tensorrt" in stages["engine"]["reason"] and "not installed" in stages["engine"]["reason"]
    fp32 = manifest["validation"]["fp32"]["comparison"]
    assert fp32["max_abs_error"] <= 1e-4 and fp32["top1_agreement"] == 1.0
    assert manifest["validation"]["int8"]["checks"] and all(c["passed"] for c in manifest["validation"]["int8"]["checks"])
    assert summary["chosen_exit"] == manifest["model"]["exit"]
    assert manifest["labels"] == [str(i) for i in range(10)]
    assert set(manifest["files"]) >= {"model.onnx", "model.int8.onnx", "report.md"}
    report = (path / "report.md").read_text()
    for heading in ("## Result", "## Memory plan", "## Training", "## Exits", "## Validation", "## Stages",
                    "## Reproduce"):
        assert heading in report
    assert f"nfcompile verify {path}\n" in report  # where this bundle is, not where a default build would be
    result = run_cli("verify", str(path))
    assert result.returncode == 0, result.stderr
    assert "bundle intact" in result.stdout


def test_the_memory_plan_held_and_deeper_blocks_got_larger_batches(bundle):
    path, _ = bundle
    plan = json.loads((path / "state" / "plan.json").read_text())["result"]
    train = json.loads((path / "state" / "train.json").read_text())["result"]
    budget = plan["budget_bytes"]
    trained = [block for block in train["blocks"] if block["trained"]]  # a block skipped after a stall measured nothing
    assert len(trained) >= 2
    for block in trained:
        assert block["measured_peak_bytes"] <= budget
        assert abs(block["predicted_peak_bytes"] - block["measured_peak_bytes"]) <= 0.15 * block["measured_peak_bytes"]
    batches = [block["batch_size"] for block in plan["blocks"]]
    assert batches == sorted(batches) and batches[-1] > batches[0]
    # Plain backprop, sized by the same profiler, gets less than any NeuroFlux block at this budget.
    assert plan["backprop_batch_size"] < batches[0]


def test_verify_catches_a_changed_byte_in_any_file(bundle, tmp_path):
    path, _ = bundle
    files = sorted(json.loads((path / "manifest.json").read_text())["files"])
    copy = tmp_path / path.name
    shutil.copytree(path, copy)
    for name in files:
        target = copy / name
        original = target.read_bytes()
        target.write_bytes(bytes([original[0] ^ 0x01]) + original[1:] if original else b"x")
        report = verify_bundle(copy, parity=False)
        assert report.changed == (name,) and not report.ok, name
        target.write_bytes(original)
    assert verify_bundle(copy, parity=True).ok
    (copy / "report.md").unlink()
    (copy / "notes.txt").write_text("not from the build")
    report = verify_bundle(copy, parity=False)
    assert report.missing == ("report.md",) and report.extra == ("notes.txt",)
    result = run_cli("verify", str(copy))
    assert result.returncode == 3
    assert "report.md" in result.stderr and "Traceback" not in result.stderr


def test_killed_during_training_then_resumed_matches_an_uninterrupted_run(bundle, workspace):
    out = workspace / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "nfcompile", "build", str(workspace / "tiny.yaml"),
                                "--out", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    checkpoint = None
    while time.time() < deadline and process.poll() is None:
        found = list(out.glob("tiny-digits/*.partial/checkpoint/checkpoint.pt"))
        if found:
            checkpoint = found[0]
            process.send_signal(signal.SIGKILL)  # mid-training: the first block is checkpointed, more remain
            break
        time.sleep(0.02)
    process.wait(timeout=60)
    assert checkpoint is not None, "training never wrote a block checkpoint"
    assert process.returncode == -signal.SIGKILL
    assert not (checkpoint.parents[1] / "state" / "train.json").exists(), "killed after training had finished"

    resumed = run_cli("build", str(workspace / "tiny.yaml"), "--out", str(out), "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming: blocks [0" in resumed.stderr  # finished blocks are not trained again
    artifact = Path(json.loads(resumed.stdout)["artifact"])
    path, summary = bundle
    assert json.loads(resumed.stdout)["chosen_exit"] == summary["chosen_exit"]
    assert onnx_graph_signature(artifact / "model.onnx") == onnx_graph_signature(path / "model.onnx")


def test_same_recipe_and_seed_give_the_same_exit_and_graph(bundle, workspace):
    again, summary = _build(workspace / "tiny.yaml", workspace / "again")
    path, first = bundle
    assert summary["chosen_exit"] == first["chosen_exit"]
    assert onnx_graph_signature(again / "model.onnx") == onnx_graph_signature(path / "model.onnx")
    assert onnx_graph_signature(again / "model.int8.onnx") == onnx_graph_signature(path / "model.int8.onnx")


def test_a_changed_recipe_reruns_only_the_stages_it_affects(workspace, tmp_path, monkeypatch):
    recipe = load_recipe(workspace / "tiny.yaml")
    run = RunFolder.create(tmp_path, recipe.name)
    run_pipeline(recipe, run, resume=False, until="validate_int8")
    changed = load_recipe(workspace / "tiny.yaml", ["quantize.calibration_samples=32"])
    build = run_pipeline(changed, run, resume=True, until="validate_int8")
    statuses = {name: record.status for name, record in build.records.items()}
    assert [statuses[s] for s in ("plan", "train", "score", "select", "export", "validate_fp32")] == ["reused"] * 6
    assert statuses["quantize"] == statuses["validate_int8"] == "ok"
    assert build.results["quantize"].activations == "uint8"  # ort-cpu bench, fp16 engine: ONNX Runtime's form
    assert statuses["prune"] == "skipped"

    reselected = load_recipe(workspace / "tiny.yaml", ["quantize.calibration_samples=32", "select.within_points=50"])
    build = run_pipeline(reselected, run, resume=True, until="select")
    assert build.records["score"].status == "reused" and build.records["select"].status == "ok"

    # quantize.activations auto follows where the model runs: an INT8 engine gets TensorRT's int8 form.
    engine = load_recipe(workspace / "tiny.yaml", ["quantize.calibration_samples=32", "select.within_points=50",
                                                   "tensorrt.precision=int8"])
    build = run_pipeline(engine, run, resume=True, until="quantize")
    assert build.records["quantize"].status == "ok" and build.results["quantize"].activations == "int8"

    # A stage whose output changed between versions is redone on resume, with everything after it.
    newer = [dataclasses.replace(s, version=s.version + 1) if s.name == "export" else s for s in pipeline.STAGES]
    monkeypatch.setattr(pipeline, "STAGES", newer)
    build = run_pipeline(engine, run, resume=True, until="quantize")
    statuses = {name: record.status for name, record in build.records.items()}
    assert [statuses[s] for s in ("plan", "train", "score", "select")] == ["reused"] * 4
    assert statuses["export"] == statuses["validate_fp32"] == statuses["quantize"] == "ok"
    monkeypatch.undo()

    # A gate that cannot pass: the CLI continues this run and exits 3 naming the number.
    result = run_cli("build", str(workspace / "tiny.yaml"), "--run", str(run.path),
                     "--set", "validate.max_abs_error=0", "--set", "validate.atol=0")
    assert result.returncode == 3, result.stderr
    assert "fp32.max_abs_error" in result.stderr and "Traceback" not in result.stderr
    assert run.path.is_dir() and run.path.name.endswith(".partial"), "a failed build is kept for --resume"
    with pytest.raises(GateFailed):
        run_pipeline(load_recipe(workspace / "tiny.yaml", ["validate.max_abs_error=0", "validate.atol=0"]), run,
                     resume=True)


def test_jetson_recipe_without_cifar_fails_fast_saying_where_to_put_it(tmp_path):
    started = time.time()
    result = run_cli("build", str(REPO / "recipes" / "resnet18_jetson.yaml"), "--out", str(tmp_path / "out"),
                     cwd=tmp_path)
    assert result.returncode == 2
    assert time.time() - started < 60
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.stderr
    assert "cifar-10-batches-py" in lines[0] and "cifar-10-python.tar.gz" in lines[0]
    assert not (tmp_path / "out").exists(), "nothing is written for a recipe that cannot run"


def test_jetson_recipe_runs_on_a_tiny_cifar_with_overrides(tmp_path):
    write_cifar(tmp_path / "data", "cifar10", per_file=40, test=60)
    overrides = ["model.width=0.125", "data.image_size=16", "train.epochs=1", "budget.memory=8MiB",
                 "train.neuroflux.profile_batch_sizes=[4,16]", "train.neuroflux.max_batch_size=64",
                 "select.min_accuracy=null", "select.max_latency_ms=null", "quantize.calibration_samples=32",
                 "quantize.max_accuracy_drop=1.0", "bench.warmup=1", "bench.repeats=3", "bench.batch_sizes=[1,4]",
                 "tensorrt.opt_batch=4", "tensorrt.max_batch=4"]
    args = [arg for override in overrides for arg in ("--set", override)]
    result = run_cli("-q", "build", str(REPO / "recipes" / "resnet18_jetson.yaml"), "--out", str(tmp_path / "out"),
                     "--json", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    artifact = Path(json.loads(result.stdout)["artifact"])
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["dataset"]["name"] == "cifar10" and len(manifest["labels"]) == 10
    assert manifest["overrides"] == overrides
    # The Jetson's INT8 engine builds from model.int8.onnx: TensorRT's form, though this build benchmarks on a CPU.
    quantize = json.loads((artifact / "state" / "quantize.json").read_text())["result"]
    assert quantize["activations"] == "int8" and quantize["symmetric"]


def test_tensorboard_events_hold_every_block_epoch_and_exit_score(bundle):
    """The event files, read back with tensorboard's own reader, carry what train.json and
    exits.json say: every block's epochs, its memory, and every exit's final scores."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path, _ = bundle
    events = EventAccumulator(str(path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    train = json.loads((path / "state" / "train.json").read_text())["result"]
    for block in train["blocks"]:
        if not block["trained"]:
            continue
        prefix = f"block{block['index']}"
        for unit in block["units"]:
            logged = [e.value for e in events.Scalars(f"{prefix}/val_accuracy/exit_{unit:02d}")]
            position = block["units"].index(unit)
            assert logged == pytest.approx([epoch["val_accuracy"][position] for epoch in block["history"]], abs=1e-6)
            assert f"{prefix}/train_loss/exit_{unit:02d}" in tags
        assert [e.value for e in events.Scalars(f"{prefix}/lr")] == pytest.approx(
            [epoch["lr"] for epoch in block["history"]], rel=1e-6)
    peaks = {e.step: e.value for e in events.Scalars("neuroflux/memory_mib/measured_peak")}
    assert peaks == pytest.approx({b["index"]: b["measured_peak_bytes"] / 2**20 for b in train["blocks"]
                                   if b["trained"]}, rel=1e-6)
    exits = json.loads((path / "exits.json").read_text())
    for score in exits["exits"]:
        assert events.Scalars(f"exits/{score['name']}/params")[0].value == score["params"]


def test_the_int8_activations_benchmark_times_both_formats_on_a_bundle(bundle, tmp_path, monkeypatch):
    """An ort-cpu build quantizes with uint8 activations (auto); the benchmark quantizes the bundle's FP32
    model both ways and times the three models together."""
    path, _ = bundle
    quantize = json.loads((path / "state" / "quantize.json").read_text())["result"]
    assert quantize["activations"] == "uint8" and not quantize["symmetric"]
    if str(REPO) not in sys.path:  # `benchmarks` lives beside the package, not inside it
        sys.path.insert(0, str(REPO))
    import benchmarks.int8_activations as benchmark

    monkeypatch.setattr(benchmark, "RESULTS_DIR", tmp_path)
    assert benchmark.main([str(path), "--batch-sizes", "1", "4", "--repeats", "5"]) == 0
    (written,) = tmp_path.glob("*-int8-activations.json")
    document = json.loads(written.read_text())
    assert [row["model"] for row in document["models"]] == ["fp32", "int8 activations", "uint8 activations"]
    for row in document["models"]:
        assert [lat["batch_size"] for lat in row["latency"]] == [1, 4]
        assert all(lat["runs"] == 5 and lat["p50_ms"] > 0 for lat in row["latency"])
        assert 0.0 <= row["test_accuracy"] <= 1.0
    assert document["models"][0]["fp32_p50_over_this"] == [1.0, 1.0]
    assert document["models"][1]["bytes"] < document["models"][0]["bytes"]
    assert document["load"]["cpu_count"] == os.cpu_count()


def test_the_profile_cache_benchmark_builds_with_an_empty_and_a_warm_cache(workspace, tmp_path, monkeypatch):
    if str(REPO) not in sys.path:  # `benchmarks` lives beside the package, not inside it
        sys.path.insert(0, str(REPO))
    import benchmarks.profile_cache as benchmark

    monkeypatch.setattr(benchmark, "RESULTS_DIR", tmp_path)
    assert benchmark.main(["--recipe", str(workspace / "tiny.yaml"), "--rounds", "1"]) == 0
    (written,) = tmp_path.glob("*-profile-cache.json")
    runs = {run["profiles"]: run for run in json.loads(written.read_text())["runs"]}
    empty, warm = runs["empty cache"], runs["warm cache"]
    # An empty cache measures every distinct step; only identical units (same structure, input and head) reuse.
    assert empty["step_profiles"]["measured"] > empty["step_profiles"]["reused"]
    assert warm["step_profiles"] == {"measured": 0, "reused": sum(empty["step_profiles"].values())}
    assert empty["stages"]["plan"]["status"] == warm["stages"]["plan"]["status"] == "ok"
