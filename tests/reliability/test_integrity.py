"""`verify` notices any change to a bundle: to a file, to the set of files, and to the manifest itself;
and the manifest covers every file a user deploys. tests/test_build.py flips a byte in every hashed
file and adds and deletes one; these are the changes it does not make."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Callable

import pytest

from nfcompile.core.io import sha256_file
from nfcompile.errors import InputError
from nfcompile.stages.bundle import verify_bundle
from nfcompile.stages.bundle.manifest import DIGEST_FIELD, bundle_files, manifest_digest, sealed

from reliability.helpers import cli_main

DEPLOYED = ("model.onnx", "model.int8.onnx", "report.md", "exits.json", "pareto.png", "checkpoint/checkpoint.pt")


def test_the_manifest_hashes_every_file_of_the_bundle(reference_bundle):
    manifest = json.loads((reference_bundle / "manifest.json").read_text())
    files = manifest["files"]
    # Every file but the manifest (which carries its own digest), so an engine built later, the
    # exits, the checkpoint and the reference outputs are covered as much as the model.
    assert set(files) == set(bundle_files(reference_bundle))
    assert set(DEPLOYED) <= set(files)
    assert {manifest["model"]["onnx"]["path"], manifest["model"]["int8"]["path"]} <= set(files)
    exits = json.loads((reference_bundle / "exits.json").read_text())["exits"]
    assert {e["onnx_file"] for e in exits} <= set(files)
    for name, entry in files.items():
        path = reference_bundle / name
        assert entry == {"sha256": sha256_file(path), "bytes": path.stat().st_size}, name
    assert manifest[DIGEST_FIELD] == manifest_digest(manifest)


def _edit_manifest(edit: Callable[[dict, Path], None], reseal: bool = False) -> Callable[[Path], None]:
    def change(bundle: Path) -> None:
        manifest = json.loads((bundle / "manifest.json").read_text())
        edit(manifest, bundle)
        (bundle / "manifest.json").write_text(json.dumps(sealed(manifest) if reseal else manifest))
    return change


def _swap_labels(manifest: dict, bundle: Path) -> None:
    manifest["labels"][0], manifest["labels"][1] = manifest["labels"][1], manifest["labels"][0]


def _replace_model_and_its_hash(manifest: dict, bundle: Path) -> None:
    """What someone who swaps the model and fixes its line in the manifest does."""
    shutil.copy(bundle / "exits" / "exit_00.onnx", bundle / "model.onnx")
    manifest["files"]["model.onnx"] = {"sha256": sha256_file(bundle / "model.onnx"),
                                       "bytes": (bundle / "model.onnx").stat().st_size}


def _rename(old: str, new: str) -> Callable[[Path], None]:
    def change(bundle: Path) -> None:
        (bundle / new).parent.mkdir(parents=True, exist_ok=True)
        (bundle / old).rename(bundle / new)
    return change


def _swap_contents(a: str, b: str) -> Callable[[Path], None]:
    def change(bundle: Path) -> None:
        first, second = (bundle / a).read_bytes(), (bundle / b).read_bytes()
        (bundle / a).write_bytes(second)
        (bundle / b).write_bytes(first)
    return change


def _folder_instead_of(name: str) -> Callable[[Path], None]:
    def change(bundle: Path) -> None:
        (bundle / name).unlink()
        (bundle / name).mkdir()
        (bundle / name / "inside.md").write_text("moved")
    return change


# (how the bundle is changed, what verify reports: changed, missing, extra)
TAMPERING = [
    pytest.param(_edit_manifest(_swap_labels), ["manifest.json"], [], [], id="labels-swapped-in-manifest"),
    pytest.param(_edit_manifest(lambda m, b: m["preprocessing"].update(mean=[0.5, 0.5, 0.5])), ["manifest.json"],
                 [], [], id="preprocessing-edited"),
    pytest.param(_edit_manifest(lambda m, b: m["recipe"]["validate"].update(max_abs_error=1e9)), ["manifest.json"],
                 [], [], id="tolerance-loosened"),
    pytest.param(_edit_manifest(_replace_model_and_its_hash), ["manifest.json"], [], [],
                 id="model-replaced-and-rehashed"),
    pytest.param(_edit_manifest(lambda m, b: m.pop(DIGEST_FIELD)), ["manifest.json"], [], [], id="digest-removed"),
    pytest.param(_rename("model.onnx", "model.v2.onnx"), [], ["model.onnx"], ["model.v2.onnx"], id="renamed"),
    pytest.param(_rename("checkpoint/checkpoint.pt", "checkpoint/old/checkpoint.pt"), [], ["checkpoint/checkpoint.pt"],
                 ["checkpoint/old/checkpoint.pt"], id="moved-into-a-folder"),
    pytest.param(_swap_contents("validation/fp32.npy", "validation/int8.npy"),
                 ["validation/fp32.npy", "validation/int8.npy"], [], [], id="two-files-swapped"),
    pytest.param(lambda b: (b / "model.int8.onnx").write_bytes(b""), ["model.int8.onnx"], [], [], id="emptied"),
    pytest.param(_folder_instead_of("report.md"), [], ["report.md"], ["report.md/inside.md"],
                 id="folder-in-place-of-a-file"),
    pytest.param(lambda b: (b / ".DS_Store").write_bytes(b"\0"), [], [], [".DS_Store"], id="hidden-extra-file"),
    pytest.param(lambda b: (b / "exits" / "link").symlink_to(b.parent), [], [], ["exits/link"],
                 id="link-to-a-folder"),
    pytest.param(lambda b: os.mkfifo(b / "validation" / "pipe.npy"), [], [], ["validation/pipe.npy"],
                 id="named-pipe"),
]


@pytest.mark.parametrize("change, changed, missing, extra", TAMPERING)
def test_verify_notices(reference_bundle, tmp_path, change, changed, missing, extra):
    copy = shutil.copytree(reference_bundle, tmp_path / reference_bundle.name, symlinks=True)
    change(copy)
    reports = []
    # Never blocked by what it reads (a named pipe would hang an open() for reading).
    worker = threading.Thread(target=lambda: reports.append(verify_bundle(copy, parity=True)), daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert reports, "verify did not finish"
    report = reports[0]
    assert (list(report.changed), list(report.missing), list(report.extra)) == (changed, missing, extra)
    assert not report.ok
    if changed or missing:  # no model is re-run from a bundle whose files or manifest changed
        assert report.parity == ()


def test_verify_exits_3_naming_an_edited_manifest(monkeypatch, capsys, reference_bundle, tmp_path):
    copy = shutil.copytree(reference_bundle, tmp_path / reference_bundle.name)
    _edit_manifest(_swap_labels)(copy)
    code, out, err = cli_main(monkeypatch, capsys, "verify", str(copy))
    assert code == 3 and "changed: manifest.json" in out
    assert "verification failed: 1 changed (first: manifest.json)" in err and "Traceback" not in err


def test_a_resealed_manifest_cannot_send_verify_outside_the_bundle(reference_bundle, tmp_path):
    """The digest is integrity, not a signature: whoever rewrites the manifest can reseal it. Even
    then the paths it names are kept inside the bundle."""
    copy = shutil.copytree(reference_bundle, tmp_path / reference_bundle.name)
    shutil.copy(copy / "validation" / "inputs.npy", tmp_path / "elsewhere.npy")
    _edit_manifest(lambda m, b: m["reference"]["files"].update(inputs="../elsewhere.npy"), reseal=True)(copy)
    with pytest.raises(InputError, match="points outside the output folder"):
        verify_bundle(copy, parity=True)
