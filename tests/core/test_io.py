"""Atomic writes, checkpoints that load with weights_only, and paths kept inside their folder."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from nfcompile.core.io import (atomic_path, inside, load_checkpoint, read_json, save_checkpoint, sha256_bytes,
                               sha256_file, write_bytes, write_json, write_text)
from nfcompile.errors import InputError, NfcompileError


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_replaces_the_target_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "deep" / "er" / "model.bin"
    write_bytes(target, b"first")
    write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    write_text(tmp_path / "report.md", "caf\u00e9\n")
    assert (tmp_path / "report.md").read_bytes() == "caf\u00e9\n".encode()
    assert _leftovers(tmp_path) == [] and _leftovers(target.parent) == []


@pytest.mark.parametrize("existed", [True, False])
def test_a_failing_writer_never_leaves_a_partial_target(tmp_path, existed):
    target = tmp_path / "model.onnx"
    if existed:
        target.write_bytes(b"the previous, complete file")
    with pytest.raises(RuntimeError, match="exporter crashed"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a fi")
            assert tmp.parent == target.parent and tmp != target
            raise RuntimeError("exporter crashed")
    if existed:
        assert target.read_bytes() == b"the previous, complete file"
    else:
        assert not target.exists()
    assert _leftovers(tmp_path) == []


def test_interrupt_also_cleans_up(tmp_path):
    target = tmp_path / "a.json"
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("{")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(NfcompileError, match="cannot"):
        write_bytes(blocker / "child.bin", b"x")


def test_json_round_trip(tmp_path):
    path = write_json(tmp_path / "exits.json", {"path": Path("a/b"), "shape": (1, 3), "nan": float("nan"),
                                                 "n": np.int64(3), "t": torch.tensor(2.5)})
    assert read_json(path) == {"path": "a/b", "shape": [1, 3], "nan": None, "n": 3, "t": 2.5}
    assert path.read_text().endswith("\n") and json.loads(path.read_text())["shape"] == [1, 3]
    with pytest.raises(InputError, match="not found"):
        read_json(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(InputError, match="bad.json"):
        read_json(tmp_path / "bad.json")


def test_sha256_of_file_and_bytes(tmp_path):
    data = os.urandom(3 << 20)  # more than one read chunk
    path = write_bytes(tmp_path / "blob", data)
    assert sha256_file(path) == sha256_bytes(data)
    assert sha256_bytes(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path):
    state = {"weights": torch.randn(3, 4), "step": 7, "names": ["a", "b"], "nested": {"lr": 0.1, "ok": None}}
    path = save_checkpoint(tmp_path / "ckpt.pt", state)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["weights"], state["weights"])
    assert {k: v for k, v in loaded.items() if k != "weights"} == {k: v for k, v in state.items() if k != "weights"}
    assert _leftovers(tmp_path) == []


class _RunsAShellCommand:
    """Unpickling this runs `touch <marker>`: what a crafted checkpoint could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_crafted_checkpoint_is_refused_not_run(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(2), "surprise": _RunsAShellCommand(marker)}, path)
    with pytest.raises(InputError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "refused" in message and "system" in message and info.value.hint
    assert "weights_only` set to `False" not in message  # torch's advice to switch the guard off
    assert not marker.exists()
    torch.load(path, weights_only=False)  # what an unguarded loader would have done
    assert marker.exists()


def _truncated(path):
    save_checkpoint(path, {"weights": torch.zeros(100)})
    path.write_bytes(path.read_bytes()[:200])


@pytest.mark.parametrize("write, fragment", [
    (lambda path: None, "checkpoint not found"),
    (lambda path: path.write_bytes(b"definitely not a checkpoint"), "not a readable checkpoint"),
    (_truncated, "not a readable checkpoint"),
    (lambda path: torch.save([torch.zeros(1)], path), "holds list, expected a dict"),
    (lambda path: torch.save({"args": argparse.Namespace(lr=0.1)}, path), "refused.*argparse.Namespace"),
])
def test_unusable_checkpoint(tmp_path, write, fragment):
    path = tmp_path / "ckpt.pt"
    write(path)
    with pytest.raises(InputError, match=fragment) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- inside()


@pytest.mark.parametrize("candidate", ["model.onnx", "exits/3.onnx", "a/../b.json", ".", "checkpoint/"])
def test_inside_accepts_paths_under_the_base(tmp_path, candidate):
    resolved = inside(tmp_path, candidate)
    assert resolved == (tmp_path / candidate).resolve()
    assert resolved == tmp_path.resolve() or tmp_path.resolve() in resolved.parents


@pytest.mark.parametrize("candidate", ["../escape.txt", "a/../../escape", "/etc/passwd", "..", "exits/../../x"])
def test_inside_refuses_escapes(tmp_path, candidate):
    with pytest.raises(InputError, match="outside"):
        inside(tmp_path / "run", candidate)


def test_inside_refuses_a_symlink_out(tmp_path):
    base = tmp_path / "run"
    base.mkdir()
    (base / "link").symlink_to(tmp_path)
    with pytest.raises(InputError, match="outside"):
        inside(base, "link/secret.txt")
