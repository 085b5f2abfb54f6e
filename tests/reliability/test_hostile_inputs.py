"""Hostile and careless input, caught where it enters (issue 16): recipes that would build gigabytes
or nest thousands of levels, values the schema takes but the pipeline cannot run, exporter opsets it
cannot honour, damaged or re-sealed bundles, images of every bit depth, gates that cannot fail,
special files as outputs, click's usage errors, the INT8 graph in every onnxruntime mode, and the
last-resort handler for bugs.

Each case runs the CLI (`main()` in-process, as tests/reliability/test_bad_inputs.py does) and
checks what a user sees: one `error:` line naming the field, file or value, the documented exit
code, no traceback, nothing written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from nfcompile.stages.bundle.manifest import MANIFEST_FILE, hash_files, sealed

from reliability.helpers import assert_no_half_written_bundle, cli_main, error_line

SMALL = "device: cpu\nmodel: {arch: resnet18, width: 0.25}\n"


def _recipe(tmp: Path, text: str) -> Path:
    path = tmp / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _refused(monkeypatch, capsys, tmp: Path, *args: str, code: int = 2) -> str:
    exit_code, out, err = cli_main(monkeypatch, capsys, "-q", *args)
    line = error_line(err)
    assert exit_code == code, err
    assert out == ""
    assert len(line) < 600, f"the error line echoes its input: {len(line)} characters"
    return line


# --------------------------------------------------------------------------- hostile YAML

_LAUGHS = "name: q\na: &a [" + ", ".join(["lol"] * 10) + "]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 10) + "]\n" for i in range(8))
_MERGE_BOMB = "name: q\nm0: &m0 {k: v}\n" + "".join(
    f"m{i}: &m{i} [" + ", ".join([f"*m{i - 1}"] * 12) + "]\n" for i in range(1, 8))
_LONG_TEXT = "name: q\ns0: &s0 " + "x" * 2000 + "\n" + "".join(
    f"s{i}: &s{i} [" + ", ".join([f"*s{i - 1}"] * 8) + "]\n" for i in range(1, 5))

HOSTILE_YAML = [
    pytest.param(_LAUGHS, ["refused", "more than", "values (aliases expanded)"], id="billion-laughs"),
    pytest.param(_MERGE_BOMB, ["refused", "aliases expanded"], id="aliases-of-mappings"),
    pytest.param(_LONG_TEXT, ["refused", "characters of text"], id="aliased-long-text"),
    pytest.param("name: q\nx: " + "[" * 3000 + "]" * 3000 + "\n", ["refused", "nested more than"], id="deep-lists"),
    pytest.param("name: q\nx:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 200)) + "  " * 200 + "v: 1\n",
                 ["refused", "nested more than"], id="deep-mappings"),
    pytest.param("name: q\nx: " + "{a: " * 2000 + "1" + "}" * 2000 + "\n", ["refused", "nested more than"],
                 id="deep-flow-mappings"),
]


@pytest.mark.parametrize("text, fragments", HOSTILE_YAML)
@pytest.mark.parametrize("command", ["check", "build"])
def test_hostile_yaml_is_refused_before_it_is_built(monkeypatch, capsys, tmp_path, text, fragments, command):
    recipe = _recipe(tmp_path, text)
    assert recipe.stat().st_size < 100_000  # small files: the danger is what they expand to
    args = [command, str(recipe)] + (["--out", str(tmp_path / "out")] if command == "build" else [])
    line = _refused(monkeypatch, capsys, tmp_path, *args)
    assert str(recipe) in line
    for fragment in fragments:
        assert fragment in line, line
    assert_no_half_written_bundle(tmp_path / "out", stages_finished=False)


def test_a_real_recipe_is_far_inside_the_limits(monkeypatch, capsys):
    from nfcompile.recipe.load import _check_bounds

    for recipe in Path(__file__).parents[2].glob("recipes/*.yaml"):
        _check_bounds(recipe.read_text(encoding="utf-8"))  # raises when over


# --------------------------------------------------------------------------- values that cannot work

INFEASIBLE = [
    pytest.param("data: {mean: [.nan, 0.5, 0.5]}\n", ["data.mean.0", "finite"], id="nan-mean"),
    pytest.param("data: {std: [1, .inf, 1]}\n", ["data.std.1", "finite"], id="infinite-std"),
    pytest.param("select: {max_latency_ms: .inf}\n", ["select.max_latency_ms", "finite"], id="infinite-constraint"),
    pytest.param("quantize: {max_accuracy_drop: .nan}\n", ["quantize.max_accuracy_drop", "finite"], id="nan-gate"),
    pytest.param("validate: {atol: .inf}\n", ["validate.atol", "finite"], id="infinite-tolerance"),
    pytest.param("train: {neuroflux: {block_split_ratio: .inf}}\n", ["train.neuroflux.block_split_ratio", "finite"],
                 id="infinite-split-ratio"),
    pytest.param("model: {arch: resnet18, width: 0.25, num_classes: 3}\n", ["model.num_classes", "10 classes"],
                 id="fewer-classes-than-digits"),
    pytest.param("model: {arch: resnet18, width: 0.25, num_classes: 1}\n", ["model.num_classes", "1 is fewer"],
                 id="one-class"),
    pytest.param("device: banana\n", ["device", "'banana'"], id="device-nonsense"),
    pytest.param("device: 'cuda:99'\n", ["device", "cuda:99"], id="device-index-out-of-range"),
    pytest.param("device: 'cpu:x'\n", ["device", "cpu:x"], id="device-malformed"),
    pytest.param("model: {arch: resnet18, width: 0.25, small_input: false}\ndata: {image_size: 16}\n",
                 ["data.image_size", "1x1 map", "BatchNorm"], id="batchnorm-on-1x1"),
    pytest.param("model: {arch: resnet18, width: 0.25, small_input: false}\ndata: {image_size: 24}\n",
                 ["data.image_size", "1x1 map"], id="batchnorm-on-1x1-at-24"),
    pytest.param("model: {arch: mobilenet_v2, width: 0.25, small_input: false}\ndata: {image_size: 16}\n",
                 ["data.image_size"], id="mobilenet-too-small"),
    pytest.param("export: {opset: 13}\n", ["export.opset", "dynamo", "18"], id="opset-below-dynamo"),
    pytest.param("export: {opset: 17, exporter: dynamo}\n", ["export.opset", "not 17"], id="opset-17-dynamo"),
    pytest.param("export: {opset: 22, exporter: torchscript}\n", ["export.opset", "torchscript", "20"],
                 id="opset-above-torchscript"),
]


@pytest.mark.parametrize("text, fragments", INFEASIBLE)
@pytest.mark.parametrize("command", ["check", "build"])
def test_values_the_pipeline_cannot_run_fail_check_and_build_alike(monkeypatch, capsys, tmp_path, text, fragments,
                                                                   command):
    device = "" if text.startswith("device") else "device: cpu\n"
    model = "" if "model:" in text else "model: {arch: resnet18, width: 0.25}\n"
    recipe = _recipe(tmp_path, f"name: q\n{device}{model}{text}")
    args = [command, str(recipe)] + (["--out", str(tmp_path / "out")] if command == "build" else [])
    line = _refused(monkeypatch, capsys, tmp_path, *args)
    for fragment in fragments:
        assert fragment in line, line
    assert_no_half_written_bundle(tmp_path / "out", stages_finished=False)


def test_feasible_neighbours_still_pass(monkeypatch, capsys, tmp_path):
    """The checks refuse what cannot run, not its neighbours: more classes than the dataset's, the
    lowest dynamo opset, VGG at 32 (its last BatchNorm sees 2x2), torchscript at 17."""
    for text in ("model: {arch: resnet18, width: 0.25, num_classes: 12}\n", "export: {opset: 18}\n",
                 "model: {arch: vgg11_bn, width: 0.25}\ndata: {image_size: 32}\n",
                 "export: {opset: 17, exporter: torchscript}\n"):
        model = "" if "model:" in text else "model: {arch: resnet18, width: 0.25}\n"
        recipe = _recipe(tmp_path, f"name: q\ndevice: cpu\n{model}{text}")
        code, _, err = cli_main(monkeypatch, capsys, "-q", "check", str(recipe))
        assert code == 0, (text, err)


def test_the_exported_file_records_the_opset_it_holds(tmp_path):
    import onnx
    import torch

    from nfcompile.runtime.onnx_io import export_onnx, model_opset

    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    for exporter, opset in (("torchscript", 16), ("torchscript", 17)):
        written = export_onnx(module, tmp_path / f"{exporter}{opset}.onnx", input_shape=(3, 8, 8), exporter=exporter,
                              opset=opset)
        assert written.opset == opset == model_opset(onnx.load(str(written.path)))


# --------------------------------------------------------------------------- damaged bundles


def _copy(bundle: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp / bundle.name))


def _edit_manifest(bundle: Path, tmp: Path, edit: Callable[[dict], None], reseal: bool = False) -> Path:
    copy = _copy(bundle, tmp)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    edit(manifest)
    (copy / MANIFEST_FILE).write_text(json.dumps(sealed(manifest) if reseal else manifest))
    return copy


def _resealed(copy: Path) -> Path:
    """What a careful attacker does after changing a file: every hash and the manifest's own digest redone."""
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["files"] = hash_files(copy)
    (copy / MANIFEST_FILE).write_text(json.dumps(sealed(manifest)))
    return copy


def _truncated(name: str, reseal: bool = False) -> Callable[[Path, Path], Path]:
    def make(bundle: Path, tmp: Path) -> Path:
        copy = _copy(bundle, tmp)
        data = (copy / name).read_bytes()
        (copy / name).write_bytes(data[: len(data) // 3])
        return _resealed(copy) if reseal else copy
    return make


def _pickled_array(name: str) -> Callable[[Path, Path], Path]:
    def make(bundle: Path, tmp: Path) -> Path:
        copy = _copy(bundle, tmp)
        np.save(copy / name, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
        return _resealed(copy)
    return make


def _without(*keys: str) -> Callable[[dict], None]:
    def edit(manifest: dict) -> None:
        node = manifest
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]
    return edit


def _set(value, *keys: str) -> Callable[[dict], None]:
    def edit(manifest: dict) -> None:
        node = manifest
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return edit


def _deep(bundle: Path, tmp: Path) -> Path:
    """The real manifest with one field nested 100000 lists deep (json.dumps itself cannot write that)."""
    copy = _copy(bundle, tmp)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["metrics"] = "DEEP"
    text = json.dumps(manifest).replace('"DEEP"', "[" * 100_000 + "1" + "]" * 100_000)
    (copy / MANIFEST_FILE).write_text(text)
    return copy


def _deep_text(bundle: Path, tmp: Path) -> Path:
    copy = _copy(bundle, tmp)
    (copy / MANIFEST_FILE).write_text('{"format": "nfcompile.bundle/1", "x": ' + "[" * 200_000 + "]" * 200_000 + "}")
    return copy


def _moderately_deep(manifest: dict) -> None:
    nested: object = 1
    for _ in range(500):
        nested = {"k": nested}
    manifest["metrics"] = nested


def _image(bundle: Path) -> str:
    return str(bundle / "pareto.png")


# (make the damaged bundle, the command after the bundle path, fragments of the error line)
DAMAGED = [
    pytest.param(_truncated("model.onnx"), ["bench", "--repeats", "3", "--warmup", "0"],
                 ["model.onnx", "not a readable ONNX model"], id="bench-truncated-model"),
    pytest.param(_truncated("model.onnx"), ["predict", "IMAGE"], ["model.onnx", "not a readable ONNX model"],
                 id="predict-truncated-model"),
    pytest.param(_truncated("model.int8.onnx"), ["predict", "IMAGE", "--model", "int8"],
                 ["model.int8.onnx", "not a readable ONNX model"], id="predict-truncated-int8"),
    pytest.param(_truncated("model.onnx", reseal=True), ["verify"], ["model.onnx", "not a readable ONNX model"],
                 id="verify-resealed-truncated-model"),
    pytest.param(_pickled_array("validation/inputs.npy"), ["verify"], ["inputs.npy", "pickled"],
                 id="verify-resealed-pickled-inputs"),
    pytest.param(_pickled_array("validation/fp32.npy"), ["verify"], ["fp32.npy", "pickled"],
                 id="verify-resealed-pickled-outputs"),
    pytest.param(lambda b, t: _edit_manifest(b, t, _without("labels")), ["predict", "IMAGE"],
                 ["manifest field labels", "required"], id="predict-manifest-without-labels"),
    pytest.param(lambda b, t: _edit_manifest(b, t, _without("files")), ["verify"], ["manifest field files"],
                 id="verify-manifest-without-files"),
    pytest.param(lambda b, t: _edit_manifest(b, t, _without("model", "io")), ["bench"],
                 ["manifest field model.io"], id="bench-manifest-without-io"),
    pytest.param(lambda b, t: _edit_manifest(b, t, _without("recipe", "validate")), ["verify"],
                 ["manifest field recipe.validate"], id="verify-manifest-without-tolerances"),
    pytest.param(lambda b, t: _edit_manifest(b, t, _set([0.2, -1, 0.3], "preprocessing", "std")), ["predict", "IMAGE"],
                 ["manifest field preprocessing.std.1"], id="predict-negative-std"),
    pytest.param(lambda b, t: _edit_manifest(b, t, _set("sixteen", "preprocessing", "image_size")),
                 ["predict", "IMAGE"], ["manifest field preprocessing.image_size"], id="predict-image-size-a-word"),
    pytest.param(lambda b, t: _edit_manifest(b, t, _set(None, "model", "onnx", "path"), reseal=True),
                 ["bench"], ["manifest field model.onnx.path"], id="bench-model-path-null"),
    pytest.param(_deep, ["verify"], ["nested too deeply"],
                 id="verify-manifest-100000-deep"),
    pytest.param(_deep_text, ["predict", "IMAGE"], ["nested too deeply"], id="predict-manifest-200000-deep"),
    pytest.param(lambda b, t: _edit_manifest(b, t, _moderately_deep), ["bench"], ["nested more than"],
                 id="bench-manifest-500-deep"),
]


@pytest.mark.parametrize("make, command, fragments", DAMAGED)
def test_a_damaged_bundle_is_named_by_every_command(monkeypatch, capsys, tmp_path, reference_bundle, make, command,
                                                    fragments):
    bundle = make(reference_bundle, tmp_path)
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    args = [command[0], str(bundle), *[_image(reference_bundle) if a == "IMAGE" else a for a in command[1:]]]
    line = _refused(monkeypatch, capsys, tmp_path, *args)
    for fragment in fragments:
        assert fragment in line, line
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before  # nothing written


# --------------------------------------------------------------------------- images of every mode


def _grey_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(24, 24), dtype=np.uint8)


def _predicted(monkeypatch, capsys, bundle: Path, *images: Path) -> list[dict]:
    code, out, err = cli_main(monkeypatch, capsys, "-q", "predict", str(bundle), *map(str, images), "--json")
    assert code == 0, err
    return json.loads(out)["predictions"]


def test_deep_images_predict_as_their_8_bit_versions(monkeypatch, capsys, tmp_path, reference_bundle):
    """16-bit PNG, 16-bit TIFF, float TIFF in [0, 1], palette, alpha over black and CMYK: each gives
    the 8-bit image's prediction, class and probability (a clipped conversion would give one class
    for every image)."""
    pairs = []
    for seed in range(3):
        grey = _grey_image(seed)
        base = tmp_path / f"{seed}.png"
        Image.fromarray(grey, "L").save(base)
        deep = {
            "16bit.png": Image.fromarray(grey.astype(np.uint16) * 257),
            "16bit.tif": Image.fromarray(grey.astype(np.uint16) * 257),
            "float.tif": Image.fromarray(grey.astype(np.float32) / 255.0, "F"),
            "palette.png": Image.fromarray(grey, "L").convert("P"),
            "opaque-alpha.png": Image.fromarray(np.dstack([grey] * 3 + [np.full_like(grey, 255)]), "RGBA"),
            "cmyk.tif": Image.fromarray(np.dstack([grey] * 3), "RGB").convert("CMYK"),
        }
        for name, image in deep.items():
            path = tmp_path / f"{seed}-{name}"
            image.save(path)
            pairs.append((base, path))
    found = _predicted(monkeypatch, capsys, reference_bundle, *[p for pair in pairs for p in pair])
    by_image = {Path(p["image"]).name: p["top"][0] for p in found}
    for base, deep in pairs:
        expected, got = by_image[base.name], by_image[deep.name]
        assert got["index"] == expected["index"], (deep.name, got, expected)
        assert abs(got["probability"] - expected["probability"]) < 0.02, (deep.name, got, expected)
    # and the images are told apart: not every one gets the same class and probability
    assert len({(round(p["top"][0]["probability"], 4), p["top"][0]["index"]) for p in found}) > 1


def test_transparency_is_composited_over_black(tmp_path):
    from nfcompile.data.preprocess import decode_image

    grey = _grey_image(7)
    alpha = np.where(np.arange(24)[None, :] < 12, 0, 255).astype(np.uint8).repeat(24, axis=0)
    Image.fromarray(np.dstack([grey, alpha]), "LA").save(tmp_path / "la.png")
    decoded = decode_image(tmp_path / "la.png", 24, "grayscale")[0].numpy()
    assert (decoded[:, :12] == 0).all() and (decoded[:, 12:] == grey[:, 12:]).all()


UNREADABLE_IMAGES = [
    pytest.param(lambda p: Image.fromarray(np.full((8, 8), 300.0, np.float32), "F").save(p), "f.tif",
                 ["f.tif", "values in [300, 300]"], id="float-out-of-range"),
    pytest.param(lambda p: Image.fromarray(np.array([[np.nan, 0.5]], np.float32), "F").save(p), "nan.tif",
                 ["nan.tif", "NaN"], id="float-nan"),
    pytest.param(lambda p: Image.fromarray(np.full((8, 8), -1.0, np.float32), "F").save(p), "neg.tif",
                 ["neg.tif", "values in [-1, -1]"], id="float-negative"),
]


@pytest.mark.parametrize("write, name, fragments", UNREADABLE_IMAGES)
def test_images_that_cannot_convert_are_refused(monkeypatch, capsys, tmp_path, reference_bundle, write, name,
                                               fragments):
    write(tmp_path / name)
    line = _refused(monkeypatch, capsys, tmp_path, "predict", str(reference_bundle), str(tmp_path / name))
    for fragment in fragments:
        assert fragment in line, line


# --------------------------------------------------------------------------- gates that cannot fail


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1", "ten", "1e999"])
def test_a_gate_limit_is_a_finite_positive_number(monkeypatch, capsys, tmp_path, value):
    line = _refused(monkeypatch, capsys, tmp_path, "bench", str(tmp_path), "--max-latency-ms", value)
    assert "--max-latency-ms" in line and value in line, line


def test_the_python_api_refuses_the_same_gate_limits(tmp_path):
    from nfcompile import api
    from nfcompile.errors import InputError

    for value in (float("nan"), float("inf"), 0.0, -3.0):
        with pytest.raises(InputError, match="max-latency-ms"):
            api.bench(tmp_path, max_latency_ms=value)


# --------------------------------------------------------------------------- writing only regular files


def _fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "pipe")
    return tmp / "pipe"


def _link_outside(tmp: Path) -> Path:
    (tmp / "elsewhere").mkdir()
    (tmp / "elsewhere" / "precious.json").write_text("keep me")
    (tmp / "table.json").symlink_to(tmp / "elsewhere" / "precious.json")
    return tmp / "table.json"


def _dangling_link(tmp: Path) -> Path:
    (tmp / "table.json").symlink_to(tmp / "nowhere" / "x.json")
    return tmp / "table.json"


def _folder(tmp: Path) -> Path:
    (tmp / "a-folder").mkdir()
    return tmp / "a-folder"


SPECIAL_TARGETS = [
    pytest.param(lambda tmp: Path(os.devnull), ["/dev/null", "device node"], id="device-node"),
    pytest.param(_fifo, ["pipe", "named pipe"], id="fifo"),
    pytest.param(_link_outside, ["table.json", "symbolic link"], id="link-outside"),
    pytest.param(_dangling_link, ["table.json", "symbolic link"], id="dangling-link"),
    pytest.param(_folder, ["a-folder", "folder"], id="folder"),
]


@pytest.mark.parametrize("make, fragments", SPECIAL_TARGETS)
def test_emit_table_writes_only_a_regular_file(monkeypatch, capsys, tmp_path, reference_bundle, make, fragments):
    target = make(tmp_path)
    before = os.lstat(target)
    line = _refused(monkeypatch, capsys, tmp_path, "bench", str(reference_bundle), "--emit-table", str(target))
    for fragment in fragments:
        assert fragment in line, line
    after = os.lstat(target)
    assert (after.st_mode, after.st_ino, after.st_rdev) == (before.st_mode, before.st_ino, before.st_rdev)
    if (tmp_path / "elsewhere").exists():
        assert (tmp_path / "elsewhere" / "precious.json").read_text() == "keep me"


def test_every_writer_refuses_special_files(tmp_path):
    from nfcompile.core.io import write_json, write_text
    from nfcompile.errors import InputError

    (tmp_path / "link").symlink_to(tmp_path / "target")
    for target in (Path(os.devnull), _fifo(tmp_path), tmp_path / "link"):
        for write in (lambda t: write_text(t, "x"), lambda t: write_json(t, {"a": 1})):
            with pytest.raises(InputError, match="nfcompile writes only regular files"):
                write(target)
    assert not (tmp_path / "target").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "pipe"]  # no temporary left


def _image_folder(root: Path) -> None:
    for index, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (12, 12), (60 * index + 10 * i, 30, 90)).save(root / name / f"{i}.png")


@pytest.mark.parametrize("link", ["loop-to-root", "loop-to-class", "link-to-sibling-class"])
def test_image_folders_with_link_loops_list_each_file_once(tmp_path, caplog, link):
    from nfcompile.data import load_data
    from nfcompile.recipe.schema import DataSection

    root = tmp_path / "images"
    _image_folder(root)
    target = {"loop-to-root": root, "loop-to-class": root / "cat", "link-to-sibling-class": root / "dog"}[link]
    (root / "cat" / "again").symlink_to(target, target_is_directory=True)
    data = load_data(DataSection(dataset="imagefolder", root=root, image_size=12, val_fraction=0.25,
                                 test_fraction=0.25), seed=0)
    assert len(data.train) + len(data.val) + len(data.test) == 8  # each file once, however many paths lead to it
    assert "link" in caplog.text


# --------------------------------------------------------------------------- one line, everywhere

USAGE = [
    pytest.param(["predict", "B", "IMAGE", "--top-k", "0"], ["--top-k", "0"], id="top-k-0"),
    pytest.param(["bench", "B", "--batch-size", "0"], ["--batch-size", "0"], id="batch-size-0"),
    pytest.param(["bench", "B", "--repeats", "1"], ["--repeats", "1"], id="repeats-1"),
    pytest.param(["verify", "B", "--no-such-option"], ["--no-such-option"], id="unknown-option"),
    pytest.param(["predict", "B", "IMAGE", "--model", "fp64"], ["--model", "fp64"], id="unknown-choice"),
    pytest.param(["predict", "B"], ["IMAGES"], id="missing-argument"),
    pytest.param(["biuld", "recipe.yaml"], ["biuld"], id="unknown-command"),
    pytest.param(["bench", "B", "--warmup", "many"], ["--warmup", "many"], id="word-for-number"),
]


@pytest.mark.parametrize("args, fragments", USAGE)
def test_click_usage_errors_are_one_line(monkeypatch, capsys, tmp_path, args, fragments):
    args = [str(tmp_path) if a == "B" else str(tmp_path / "x.png") if a == "IMAGE" else a for a in args]
    line = _refused(monkeypatch, capsys, tmp_path, *args)
    for fragment in fragments:
        assert fragment in line, line
    assert "Usage:" not in line and "--help" not in line


# --------------------------------------------------------------------------- INT8 in every onnxruntime mode


@pytest.mark.parametrize("activations", ["uint8", "int8"])
@pytest.mark.parametrize("style", ["Fixed", "Runtime"])
def test_onnxruntime_converts_the_int8_model_in_every_style(tmp_path, int8_models, activations, style):
    model = Path(shutil.copy(int8_models[activations], tmp_path / "model.int8.onnx"))
    result = subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(model),
                             "--optimization_style", style], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert list(tmp_path.glob("*.ort"))


@pytest.mark.parametrize("activations", ["uint8", "int8"])
def test_int8_parity_holds_with_graph_optimizations_disabled(reference_bundle, int8_models, activations):
    """The INT8 model computes the same function whether onnxruntime fuses it or not: top-1 agreement
    on the bundle's reference inputs, and the two runs differ far less than INT8 differs from FP32."""
    import onnxruntime as ort

    x = np.load(reference_bundle / "validation" / "inputs.npy")
    fp32 = np.load(reference_bundle / "validation" / "fp32.npy")
    outputs = {}
    for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_ALL"):
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        session = ort.InferenceSession(str(int8_models[activations]), options, providers=["CPUExecutionProvider"])
        outputs[level] = session.run(None, {session.get_inputs()[0].name: x})[0]
    optimized = outputs["ORT_ENABLE_ALL"]
    quantization_error = float(np.abs(optimized - fp32).max())
    # The int8 graph is TensorRT's: its biases are FP32 constants, which onnxruntime's optimizer
    # re-quantizes itself (qdq.py), so its fused run is a slightly different function: 0.15 apart against
    # an INT8 error of 0.27 on this recipe's exit (2026-12-06), uint8 0.05 against 0.30. Still closer
    # to each other than INT8 is to FP32.
    share = 0.25 if activations == "uint8" else 1.0
    for level, out in outputs.items():
        assert (out.argmax(1) == optimized.argmax(1)).all(), level
        assert float(np.abs(out - optimized).max()) <= share * quantization_error, (level, quantization_error)


def test_the_tensorrt_int8_graph_keeps_fp32_biases_and_logits(int8_models):
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(int8_models["int8"]))
    constants = {init.name: init for init in model.graph.initializer}
    dq_inputs = [constants.get(n.input[0]) for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert not [t.name for t in dq_inputs if t is not None and t.data_type == TensorProto.INT32]  # TensorRT: no INT32 DQ
    producers = {out: node for node in model.graph.node for out in node.output}
    assert producers[model.graph.output[0].name].op_type not in ("DequantizeLinear", "QuantizeLinear")


def test_the_onnx_runtime_int8_graph_keeps_int32_biases_and_fp32_logits(int8_models):
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(int8_models["uint8"]))
    constants = {init.name: init for init in model.graph.initializer}
    dq_inputs = [constants.get(n.input[0]) for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert [t.name for t in dq_inputs if t is not None and t.data_type == TensorProto.INT32]  # ORT's own QDQ form
    producers = {out: node for node in model.graph.node for out in node.output}
    assert producers[model.graph.output[0].name].op_type not in ("DequantizeLinear", "QuantizeLinear")


# --------------------------------------------------------------------------- the last resort

BUGS = [
    pytest.param(RuntimeError("something inside broke"), "RuntimeError", id="runtime-error"),
    pytest.param(KeyError("files"), "KeyError", id="key-error"),
    pytest.param(RecursionError("maximum recursion depth exceeded"), "RecursionError", id="recursion-error"),
    pytest.param(ZeroDivisionError("division by zero"), "ZeroDivisionError", id="zero-division"),
]


@pytest.mark.parametrize("exc, name", BUGS)
def test_an_unexpected_error_is_one_line_naming_the_log(monkeypatch, capsys, tmp_path, exc, name):
    from nfcompile import api

    def broken(*args, **kwargs):
        raise exc

    monkeypatch.setattr(api, "check", broken)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    recipe = _recipe(tmp_path, f"name: q\n{SMALL}")
    line = _refused(monkeypatch, capsys, tmp_path, "check", str(recipe), code=1)
    assert "nfcompile check" in line and name in line, line
    logged = Path(line.split("full traceback in ")[1].split(";")[0])
    assert logged.is_file() and tmp_path in logged.parents
    text = logged.read_text()
    assert "Traceback" in text and name in text and "broken" in text

    code, _, err = cli_main(monkeypatch, capsys, "-v", "check", str(recipe))
    assert code == 1 and "Traceback" in err and name in err
    assert err.strip().splitlines()[-1].startswith("error: ")
