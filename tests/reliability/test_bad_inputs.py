"""A corpus of malformed recipes, datasets, output folders, weights and images, each run through the
CLI (`main()` in-process; the permission cases as real processes): every one ends with one `error:`
line naming the cause, the documented exit code (2 bad recipe or input, 1 anything else), no
traceback, and no half-written bundle (no run folder at all when no stage had finished).

tests/recipe and tests/data check the loaders' messages; this corpus checks what a user and a CI
job see from `nfcompile build`, `check`, `predict` and `verify`.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from nfcompile.runs import PARTIAL_SUFFIX
from nfcompile.stages.bundle import verify_bundle

from conftest import write_cifar
from reliability.helpers import (RunsAShellCommand, assert_no_half_written_bundle, cli_main,
                                 error_line, fill_disk_at, partial_from_bundle, png_header, run_cli_unprivileged)

SMALL = "device: cpu\nmodel: {arch: resnet18, width: 0.25}\n"  # builds in milliseconds


def _write(folder: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def _build(recipe: Path, tmp: Path, *extra: str) -> list[str]:
    return ["build", str(recipe), "--out", str(tmp / "out"), *extra]


def _recipe(text: str, *extra: str) -> Callable[[Path], list[str]]:
    return lambda tmp: _build(_write(tmp, text), tmp, *extra)


def _raw_recipe(data: bytes) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        (tmp / "recipe.yaml").write_bytes(data)
        return _build(tmp / "recipe.yaml", tmp)
    return make


def _out_at(where: Callable[[Path], Path], mkdir: bool = False) -> Callable[[Path], list[str]]:
    """A valid recipe built into the --out folder that ``where`` makes."""
    def make(tmp: Path) -> list[str]:
        if mkdir:
            (tmp / "out").mkdir()
        return ["build", str(_write(tmp, f"name: q\n{SMALL}")), "--out", str(where(tmp))]
    return make


def _data_recipe(tmp: Path, dataset: str, root: Path) -> list[str]:
    return _build(_write(tmp, f"name: q\n{SMALL}data: {{dataset: {dataset}, root: {root}, image_size: 16}}\n"), tmp)


def _cifar(damage: Callable[[Path], None]) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        write_cifar(tmp / "data", "cifar10")
        damage(tmp / "data" / "cifar-10-batches-py")
        return _data_recipe(tmp, "cifar10", tmp / "data")
    return make


def _images(damage: Callable[[Path], None], classes: tuple[str, ...] = ("cat", "dog")) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        for index, name in enumerate(classes):
            (tmp / "images" / name).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (20 + i, 18), (80 * index, 40 * i, 90)).save(tmp / "images" / name / f"{i}.png")
        damage(tmp / "images")
        return _data_recipe(tmp, "imagefolder", tmp / "images")
    return make


def _weights(write: Callable[[Path], None], command: str = "build") -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        write(tmp / "weights.pt")
        recipe = _write(tmp, "name: q\ndevice: cpu\nmodel: {arch: resnet18, width: 0.25, "
                             f"pretrained: {tmp / 'weights.pt'}}}\n")
        return _build(recipe, tmp) if command == "build" else ["check", str(recipe)]
    return make


def _crafted_checkpoint(path: Path, **save) -> None:
    torch.save({"units.0.0.weight": torch.zeros(1), "x": RunsAShellCommand(path.parent / "executed")}, path, **save)


def _other_width_weights(path: Path) -> None:
    from nfcompile.models import build_unit_net
    from nfcompile.recipe.schema import ModelSection

    torch.save(build_unit_net(ModelSection(arch="resnet18", width=0.5), 10).state_dict(), path)


# (make the input and return the CLI arguments, exit code, fragments the error line must contain)
CASES = [
    # -- the recipe file and its values
    pytest.param(_recipe("name: q\nmodel:\n arch: a\n  width: 2\n"), 2, ["invalid YAML", "line 4"], id="bad-yaml"),
    pytest.param(_recipe("name: q\n\tseed: 1\n"), 2, ["invalid YAML", "line 2"], id="tab-indent"),
    pytest.param(_recipe("name: q\nmodle: {}\n"), 2, ["modle", "did you mean 'model'"], id="unknown-key"),
    pytest.param(_recipe("name: q\ntrain: {neuroflux: {cache: {placment: disk}}}\n"), 2,
                 ["train.neuroflux.cache.placment", "did you mean 'placement'"], id="misspelled-deep-key"),
    pytest.param(_recipe("name: q\n", "--set", "train.neuroflux.max_batch=8"), 2,
                 ["train.neuroflux.max_batch:", "did you mean 'max_batch_size'"], id="misspelled-set"),
    pytest.param(_recipe("name: q\ntrain: {epochs: many}\n"), 2, ["train.epochs", "'many'"], id="word-for-number"),
    pytest.param(_recipe("name: q\ntrain: {lr: [0.1]}\n"), 2, ["train.lr"], id="list-for-number"),
    pytest.param(_recipe("name: q\ndata: digits\n"), 2, ["data:", "'digits'"], id="value-for-section"),
    pytest.param(_recipe("name: q\ntrain: {epochs: yes}\n"), 2, ["train.epochs", "true/false"], id="yes-for-number"),
    pytest.param(_recipe("name: q\ndata: {image_size: 4}\n"), 2, ["data.image_size", "8"], id="image-size-too-small"),
    pytest.param(_recipe("name: q\ntrain: {momentum: 1.5}\n"), 2, ["train.momentum"], id="momentum-over-1"),
    pytest.param(_recipe("name: q\ntrain: {lr: .nan}\n"), 2, ["train.lr"], id="nan-learning-rate"),
    pytest.param(_recipe("name: q\nbudget: {memory: 1e400GiB}\n"), 2, ["budget.memory", "finite"],
                 id="infinite-budget"),
    pytest.param(_recipe("name: q\nbudget: {memory: twelve}\n"), 2, ["budget.memory", "cannot read"],
                 id="budget-not-a-size"),
    pytest.param(_recipe("name: q\ntensorrt: {precision: int8}\nquantize: {enabled: false}\n"), 2,
                 ["tensorrt.precision int8", "quantize.enabled"], id="int8-engine-without-int8"),
    pytest.param(_recipe("name: q\nselect: {latency_batch_size: 4}\n"), 2, ["bench.batch_sizes"],
                 id="latency-batch-not-timed"),
    pytest.param(_recipe("name: q\ndata: {val_fraction: 0.45, test_fraction: 0.45}\n"), 2, ["too little to train"],
                 id="no-data-left-to-train"),
    pytest.param(_recipe("name: q\ntensorrt: {min_batch: 16}\n"), 2, ["min_batch <= opt_batch <= max_batch"],
                 id="engine-profile-out-of-order"),
    pytest.param(_recipe("name: q\ntrain: {method: gradient_filter}\n"), 2, ["model.pretrained"],
                 id="fine-tune-without-weights"),
    pytest.param(_recipe("name: q\nmodel: {arch: resnet19}\n"), 2, ["model.arch", "resnet19"], id="unknown-arch"),
    pytest.param(_recipe("name: q\nmodel: {arch: vgg11_bn, width: 0.25, small_input: false}\ndata: {image_size: 16}\n"),
                 2, ["data.image_size"], id="input-too-small-for-arch"),
    pytest.param(_recipe("name: ../evil\n"), 2, ["name", "'../evil'"], id="name-climbs-out"),
    pytest.param(_recipe("name: a/b\n"), 2, ["name", "'a/b'"], id="name-with-slash"),
    pytest.param(_recipe("name: q\n", "--set", "name=/tmp/elsewhere"), 2, ["name", "'/tmp/elsewhere'"],
                 id="set-absolute-name"),
    pytest.param(lambda tmp: _build(tmp, tmp), 2, ["is a folder"], id="recipe-is-a-folder"),
    pytest.param(lambda tmp: _build(tmp / "absent.yaml", tmp), 2, ["absent.yaml", "not found"], id="recipe-missing"),
    pytest.param(_raw_recipe(b"name: caf\xe9\n"), 2, ["not UTF-8"], id="recipe-not-utf8"),
    pytest.param(lambda tmp: _build(_write(tmp, "name: q\n" + "# padding\n" * 200_000), tmp), 2,
                 ["bytes", "a recipe should be far below"], id="recipe-too-big"),
    pytest.param(_recipe("# nothing but a comment\n"), 2, ["recipe is empty"], id="recipe-empty"),
    pytest.param(_recipe("- name: q\n"), 2, ["got a list"], id="recipe-is-a-list"),
    # -- datasets
    pytest.param(lambda tmp: _data_recipe(tmp, "cifar10", tmp / "nowhere"), 2,
                 ["CIFAR-10 not found", "cifar-10-python.tar.gz"], id="cifar-missing"),
    pytest.param(_cifar(lambda d: (d / "data_batch_2").write_bytes(b"\x80\x04garbage")), 2,
                 ["data_batch_2", "not a readable CIFAR python batch"], id="cifar-corrupt-batch"),
    pytest.param(_cifar(lambda d: (d / "data_batch_1").write_bytes(pickle.dumps(
        {"data": np.zeros((6, 1024), np.uint8), "labels": [0] * 6}))), 2,
                 ["data_batch_1", "(6, 1024)", "(N, 3072)"], id="cifar-wrong-image-size"),
    pytest.param(_cifar(lambda d: (d / "test_batch").unlink()), 2, ["test_batch"], id="cifar-file-missing"),
    pytest.param(_cifar(lambda d: (d / "batches.meta").write_bytes(pickle.dumps(RunsAShellCommand(d / "executed")))),
                 2, ["batches.meta", "refusing to load", "system"], id="cifar-crafted-pickle"),
    pytest.param(lambda tmp: _data_recipe(tmp, "imagefolder", tmp / "nowhere"), 2, ["image folder not found"],
                 id="imagefolder-missing"),
    pytest.param(_images(lambda d: None, classes=("only",)), 2, ["1 class folder", "at least 2"],
                 id="imagefolder-one-class"),
    pytest.param(_images(lambda d: (d / "dog" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")), 2,
                 ["dog/1.png"], id="imagefolder-corrupt-image"),
    pytest.param(_images(lambda d: (d / "dog" / "2.png").write_bytes((d / "dog" / "2.png").read_bytes()[:60])), 2,
                 ["dog/2.png", "cannot decode image"], id="imagefolder-truncated-image"),
    pytest.param(_images(lambda d: (d / "cat" / "notes.jpg").write_text("shopping list")), 2,
                 ["cat/notes.jpg", "not an image file"], id="imagefolder-text-file"),
    pytest.param(_images(lambda d: (d / "cat" / "bomb.png").write_bytes(png_header(10_000, 10_000))), 2,
                 ["cat/bomb.png", "10000x10000 pixels"], id="imagefolder-decompression-bomb"),
    pytest.param(_images(lambda d: [p.unlink() for p in (d / "dog").iterdir()]), 2, ["dog"],
                 id="imagefolder-empty-class"),
    pytest.param(lambda tmp: _data_recipe(tmp, "digits", tmp), 2, ["data.root", "bundled"], id="digits-with-root"),
    # -- where the bundle goes
    pytest.param(_out_at(lambda tmp: _write(tmp, "x", "file")), 2, ["is a file, not a folder"], id="out-is-a-file"),
    pytest.param(_out_at(lambda tmp: _write(tmp, "x", "file") / "sub"), 2, ["cannot create", "Not a directory"],
                 id="out-under-a-file"),
    pytest.param(_out_at(lambda tmp: _write(tmp / "out", "x", "q").parent, mkdir=True), 2, ["cannot create", "out/q"],
                 id="recipe-folder-is-a-file"),
    pytest.param(lambda tmp: _build(_write(tmp, f"name: q\n{SMALL}"), tmp, "--run", str(tmp)), 2,
                 ["not an nfcompile run folder"], id="run-is-not-a-run"),
    pytest.param(lambda tmp: ["verify", str(tmp / "nowhere")], 2, ["no such bundle folder"], id="verify-missing"),
    pytest.param(lambda tmp: ["verify", str(_write(tmp, "x", "file"))], 2, ["is a file"], id="verify-a-file"),
    # -- weights given as model.pretrained: read weights_only, a crafted pickle refused, never run
    pytest.param(_weights(_crafted_checkpoint, "check"), 2, ["weights.pt", "refused", "posix.system"],
                 id="check-crafted-weights"),
    pytest.param(_weights(_crafted_checkpoint), 2, ["weights.pt", "refused", "posix.system"],
                 id="build-crafted-weights"),
    pytest.param(_weights(lambda p: _crafted_checkpoint(p, _use_new_zipfile_serialization=False)), 2,
                 ["weights.pt", "refused"], id="build-crafted-legacy-weights"),
    pytest.param(_weights(lambda p: p.write_bytes(b"PK\x03\x04 not a zip")), 2,
                 ["weights.pt", "not a readable checkpoint"], id="corrupt-weights"),
    pytest.param(_weights(_other_width_weights, "check"), 2, ["weights.pt", "do not fit resnet18"],
                 id="weights-of-another-width"),
    pytest.param(_weights(lambda p: torch.save({"units.0.0.weight": "not a tensor"}, p), "check"), 2,
                 ["weights.pt", "not a state_dict"], id="weights-not-tensors"),
]


@pytest.mark.parametrize("make, code, fragments", CASES)
def test_bad_input_is_one_error_line_and_leaves_no_bundle(monkeypatch, capsys, tmp_path, make, code, fragments):
    args = make(tmp_path)
    exit_code, out, err = cli_main(monkeypatch, capsys, "-q", *args)
    line = error_line(err)
    assert exit_code == code, err
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert out == ""
    assert_no_half_written_bundle(tmp_path / "out", stages_finished=False)
    assert not list(tmp_path.rglob("executed")), "a crafted file ran its code"


def test_the_corpus_is_big_enough():
    assert len(CASES) + len(BUNDLE_CASES) + len(DISK_FULL) + len(UNPRIVILEGED) >= 30


# --------------------------------------------------------------------------- bad input to bundle commands


def _copy_with_manifest(bundle: Path, tmp: Path, edit: Callable[[dict], None]) -> Path:
    copy = tmp / bundle.name
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def _outside_model(manifest: dict) -> None:
    manifest["model"]["onnx"]["path"] = "../outside.onnx"


def _fewer_labels(manifest: dict) -> None:
    manifest["labels"] = manifest["labels"][:3]


def _image(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def _truncated_png(tmp: Path) -> Path:
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp / "full.png")
    return _image(tmp, "cut.png", (tmp / "full.png").read_bytes()[:70])


BUNDLE_CASES = [
    pytest.param(lambda b, t: ["predict", str(b), str(_image(t, "noise.png", bytes(range(256)) * 8))], 2,
                 ["noise.png", "not an image file"], id="predict-corrupt-image"),
    pytest.param(lambda b, t: ["predict", str(b), str(_truncated_png(t))], 2, ["cut.png", "cannot decode image"],
                 id="predict-truncated-image"),
    pytest.param(lambda b, t: ["predict", str(b), str(_image(t, "bomb.png", png_header(10_000, 10_000)))], 2,
                 ["bomb.png", "10000x10000 pixels", "more than"], id="predict-decompression-bomb"),
    pytest.param(lambda b, t: ["predict", str(b), str(_image(t, "huge.png", png_header(30_000, 30_000)))], 2,
                 ["huge.png", "decompression bomb"], id="predict-bomb-beyond-pil-limit"),
    pytest.param(lambda b, t: ["predict", str(b), str(_image(t, "notes.txt", b"not a picture\n"))], 2,
                 ["notes.txt", "not an image file"], id="predict-text-file"),
    pytest.param(lambda b, t: ["predict", str(b), str(t / "absent.png")], 2, ["absent.png", "not found"],
                 id="predict-missing-image"),
    pytest.param(lambda b, t: ["predict", str(b), str(t)], 2, ["is a folder"], id="predict-folder-as-image"),
    pytest.param(lambda b, t: ["predict", str(t / "nowhere"), str(t)], 2, ["no such bundle folder"],
                 id="predict-missing-bundle"),
    pytest.param(lambda b, t: ["predict", str(shutil.copytree(b, t / f"x{PARTIAL_SUFFIX}")), str(t)], 2,
                 ["an unfinished build"], id="predict-partial-run"),
    pytest.param(lambda b, t: ["predict", str(_copy_with_manifest(b, t, _outside_model)), str(b / "pareto.png")], 2,
                 ["points outside"], id="predict-model-path-outside-bundle"),
    pytest.param(lambda b, t: ["predict", str(_copy_with_manifest(b, t, _fewer_labels)), str(b / "pareto.png")], 2,
                 ["3 labels"], id="predict-labels-do-not-match-model"),
    pytest.param(lambda b, t: ["verify", str(_copy_with_manifest(b, t, lambda m: m.update(format="other/9")))], 2,
                 ["not an nfcompile manifest"], id="verify-foreign-manifest"),
    pytest.param(lambda b, t: ["verify", str(b.parent), ], 2, ["no manifest.json"], id="verify-recipe-folder"),
    pytest.param(lambda b, t: _build(b.parents[2] / "recipe.yaml", t, "--run", str(b)), 2, ["a finished bundle"],
                 id="build-into-a-finished-bundle"),
]


@pytest.mark.parametrize("make, code, fragments", BUNDLE_CASES)
def test_bad_input_to_a_bundle_command(monkeypatch, capsys, tmp_path, reference_bundle, make, code, fragments):
    before = sorted(p.name for p in reference_bundle.parent.iterdir())
    exit_code, out, err = cli_main(monkeypatch, capsys, "-q", *make(reference_bundle, tmp_path))
    line = error_line(err)
    assert exit_code == code and out == "", err
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert sorted(p.name for p in reference_bundle.parent.iterdir()) == before


def test_a_manifest_cut_short_is_named(monkeypatch, capsys, tmp_path, reference_bundle):
    copy = shutil.copytree(reference_bundle, tmp_path / reference_bundle.name)
    (copy / "manifest.json").write_bytes((copy / "manifest.json").read_bytes()[:500])
    exit_code, _, err = cli_main(monkeypatch, capsys, "-q", "verify", str(copy))
    assert exit_code == 2 and "manifest.json: not a readable JSON file" in error_line(err)


# --------------------------------------------------------------------------- a full disk


def _named(name: str) -> Callable[[Path], bool]:
    return lambda target: target.name == name


# (stage the partial run starts at, the file whose write fills the disk)
DISK_FULL = [
    pytest.param("bundle", "pytorch.npy", id="bundle-npy"),  # np.save into atomic_path
    pytest.param("bundle", "report.md", id="bundle-report"),
    pytest.param("bundle", "manifest.json", id="bundle-manifest"),
    pytest.param("export", "model.onnx", id="export-onnx"),  # onnx.save into atomic_path
    pytest.param("quantize", "model.int8.onnx", id="quantize-int8"),
]


@pytest.mark.parametrize("first_stage, full_at", DISK_FULL)
def test_a_disk_that_fills_up_stops_the_build_cleanly(monkeypatch, capsys, tmp_path, reference_bundle, workspace,
                                                      first_stage, full_at):
    run = partial_from_bundle(reference_bundle, tmp_path / "out", first_stage)
    refused = fill_disk_at(monkeypatch, _named(full_at))
    code, out, err = cli_main(monkeypatch, capsys, "-q", "build", str(workspace / "recipe.yaml"),
                              "--out", str(tmp_path / "out"), "--resume")
    line = error_line(err)
    assert code == 1 and out == "" and refused[0].name == full_at
    assert f"cannot write {refused[0]}" in line and "No space left on device" in line, line
    # Kept for --resume (stages before had finished), never renamed to a bundle, no temp file left.
    assert assert_no_half_written_bundle(tmp_path / "out", stages_finished=True) == [run]
    assert not [p for p in run.rglob(".*") if p.name != ".lock"]
    assert not (run / "manifest.json").exists()


def test_after_the_disk_is_freed_resume_finishes_the_bundle(monkeypatch, capsys, tmp_path, reference_bundle,
                                                            workspace):
    run = partial_from_bundle(reference_bundle, tmp_path / "out", "quantize")
    fill_disk_at(monkeypatch, _named("model.int8.onnx"))
    args = ("-q", "build", str(workspace / "recipe.yaml"), "--out", str(tmp_path / "out"), "--resume", "--json")
    assert cli_main(monkeypatch, capsys, *args)[0] == 1
    monkeypatch.undo()
    code, out, err = cli_main(monkeypatch, capsys, *args)
    assert code == 0, err
    bundle = Path(json.loads(out)["artifact"])
    assert bundle == run.with_name(run.name.removesuffix(PARTIAL_SUFFIX)) and verify_bundle(bundle).ok


def test_writes_that_never_started_leave_no_run_folder(monkeypatch, capsys, tmp_path, workspace):
    refused = fill_disk_at(monkeypatch, lambda target: True)  # full before the first byte
    code, _, err = cli_main(monkeypatch, capsys, "-q", "build", str(workspace / "recipe.yaml"),
                            "--out", str(tmp_path / "out"))
    assert code == 1 and "No space left on device" in error_line(err) and refused[0].name == "recipe.json"
    assert_no_half_written_bundle(tmp_path / "out", stages_finished=False)


# --------------------------------------------------------------------------- permissions (real processes)


def _unreadable_recipe(folder: Path) -> list[str]:
    recipe = _write(folder, f"name: q\n{SMALL}")
    recipe.chmod(0o000)
    return _build(recipe, folder)


def _read_only_out(folder: Path) -> list[str]:
    (folder / "out").mkdir()
    (folder / "out").chmod(0o555)
    return _build(_write(folder, f"name: q\n{SMALL}"), folder)


def _unreadable_cifar_batch(folder: Path) -> list[str]:
    write_cifar(folder / "data", "cifar10")
    (folder / "data" / "cifar-10-batches-py" / "data_batch_3").chmod(0o000)
    return _data_recipe(folder, "cifar10", folder / "data")


UNPRIVILEGED = [
    pytest.param(_unreadable_recipe, ["recipe.yaml", "not readable (permission denied)"], id="recipe-unreadable"),
    pytest.param(_read_only_out, ["out/q", "Permission denied"], id="out-read-only"),
    pytest.param(_unreadable_cifar_batch, ["data_batch_3", "Permission denied"], id="dataset-unreadable"),
]


@pytest.mark.slow
@pytest.mark.parametrize("make, fragments", UNPRIVILEGED)
def test_permission_denied_as_a_real_process(tmp_path, make, fragments):
    result = run_cli_unprivileged("-q", *make(tmp_path), cwd=tmp_path)
    line = error_line(result.stderr)
    assert result.returncode == 2, result.stderr
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert_no_half_written_bundle(tmp_path / "out", stages_finished=False)
